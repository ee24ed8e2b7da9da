"""The sweep directory, owned in one place: its layout and records (`layout`), cell ids (`ids`),
atomic files (`atomic`) and who is running a cell right now (`liveness`).

Other modules take the sweep directory's file names from `layout` and read or update sweep.json and
status.json through it (the collector reads them leniently, recording what is broken, via
`layout.read_*_object`); this package imports nothing of ablate's above it, so every floor may use it.
"""
