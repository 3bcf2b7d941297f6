"""Hosts for CI across machines: an inventory file (inventory.py), placing a scenario on
its hosts (placement.py), the preflight that says what each host can run (preflight.py,
`harness hosts check`) and their command line (command.py).  Nothing is imported here, so
that `harness --help` stays quick."""
