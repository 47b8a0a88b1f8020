"""arm64 scenarios, shipped as a kvmsim scenario library (entry point
``kvmsim.scenarios`` → ``arm64``): ``kvmsim matrix`` runs them on arm64."""
