"""The ``agora`` command line: a thin Typer shell over broker, agents and auctioneer."""
