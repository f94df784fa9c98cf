"""Stand-in for the `pyoco_server` package of the Python original (pyoco-server 0.5).

Its README's quickstart flow names `pyoco_server._workflow_test_tasks:add_one` and `:to_text`.
The Rust worker writes this package into its work directory and the runner puts that directory
at the END of `sys.path`, so it is imported only when no real `pyoco_server` is installed: a
runtime that has the original keeps the original.
"""

STAND_IN = True
