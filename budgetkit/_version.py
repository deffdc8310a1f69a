"""The package version (one definition; ``budgetkit.__version__`` re-exports it)."""

VERSION = "0.1.0"
