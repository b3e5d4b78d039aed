"""DICOM adapter: the SCP and its handlers, named status codes, file storage, SCU senders."""
