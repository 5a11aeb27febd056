"""The controller side: one process per controller, its cache, loop and ``rt`` handle.

Nothing here is imported by the supervisor; it only starts
``python -m cosihost.worker``.
"""
