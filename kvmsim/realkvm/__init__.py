"""The /dev/kvm backend of ``kvmsim crosscheck`` (docs/crosscheck.md).

Standard library only (``fcntl``-free ioctls through ctypes, ``mmap``,
``struct``, ``os``).  Imported only by the ``crosscheck`` command, the
``kvm`` bench backend and their tests: the core never imports it.
"""
