"""Pieces of the study runner ``python -m marginnce_kit.table5``: paired-bootstrap statistics
(:mod:`.stats`), the noisy-correspondence study (:mod:`.noise`) and the recipe measurements
(:mod:`.recipe`)."""
