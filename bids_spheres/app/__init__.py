"""The BIDS-App: fMRIPrep outputs in, BIDS-Derivatives sphere timeseries out.

Data flow (each arrow one function call): :func:`bids_spheres.app.cli.main`
-> :class:`~bids_spheres.app.config.RunConfig` ->
:func:`bids_spheres.app.workflow.participant` / ``group``, which find runs
(:mod:`~bids_spheres.app.discovery`), load seeds and strategies
(:mod:`~bids_spheres.app.seeds`, :mod:`~bids_spheres.app.confounds`), process
each run (:mod:`~bids_spheres.app.run`, through the masker's public API only)
on a pool or Dask (:mod:`~bids_spheres.app.execution`) and write
(:mod:`~bids_spheres.app.outputs`). The group level
(:mod:`~bids_spheres.app.group`) reads only what the participant level wrote.
"""
