"""Test and demo harness: real DICOM peers (see :mod:`harness.peers`)."""
