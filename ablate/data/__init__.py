"""Data in: raw rows of a file or hub split (`readers`), preference pairs and unpaired examples with their
tokens (`pairs`), whole-source checks (`checks`) and the objective-neutral held-out metrics (`heldout`)."""
