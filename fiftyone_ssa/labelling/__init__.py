"""Labelling runs over FiftyOne collections (layer 3): SSA (:mod:`.ssa`) and SSA-engine
(:mod:`.engine`) jobs, where their inputs come from (:mod:`.sources`), the one run loop
(:mod:`.loop`), run keys and resume (:mod:`.record`), the per-sample writer (:mod:`.writer`)
and torchrun ranks (:mod:`.distributed`)."""
