"""Training: the run's config (:mod:`.config`), checkpoint IO (:mod:`.checkpoint`), the batch sampler
(:mod:`.sampler`), the data-parallel glue (:mod:`.distributed`), the run's records (:mod:`.records`)
and the loop (:mod:`.loop`). The command line is :mod:`marginnce_kit.train`."""
