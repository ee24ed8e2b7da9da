"""One cell's training: the objective registry, models, the lean log-prob path, the data order, the
engines for several processes, checkpoints, the per-sweep shared inputs and the trainer loop itself."""
