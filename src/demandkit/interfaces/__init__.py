"""What faces a person rather than a program: the ``demandkit`` command line, plots and the replications of
published tables on the built-in data."""
