"""Where a calibration lives: the store protocol and its backends."""
