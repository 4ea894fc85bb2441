"""One module per fixture kind: ``<kind>.py`` defines ``run(case: ParityCase) -> None``."""
