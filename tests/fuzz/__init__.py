"""Coverage-guided fuzzing of every parser of hostile input (atheris); see docs/testing.md."""
