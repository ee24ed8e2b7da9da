"""The sweep directory, owned in one place: its layout and records (`layout`), cell ids (`ids`),
atomic files (`atomic`) and who is running a cell right now (`liveness`).

Nothing else in ablate spells a file name of the sweep directory or reads sweep.json/status.json
itself; this package imports nothing of ablate's, so every other floor may use it.
"""
