"""Declaration modules for the `xos._native._sys` CFFI extension, one per subsystem."""
