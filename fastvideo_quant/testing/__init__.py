"""Testing helpers shipped with the package: real-process-group runner and the conformance suite."""
