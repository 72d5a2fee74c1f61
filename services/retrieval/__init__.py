"""The retrieval service: where stored instances are (``retrieval.locate``) and C-MOVE's
C-STORE sub-operations to registered destinations (``retrieval.move``)."""
