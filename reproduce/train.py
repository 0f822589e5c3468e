"""`python -m reproduce train --config C.yaml [--resume]`: the paper's training, on 1..N ranks.

Run it under mpirun (scripts/) for Horovod; without mpirun it is one rank. The loop, the
schedule and the outputs (``last.ckpt``, ``best.ckpt``, ``train_log.csv``, ``events/``) are
``model.training.fit``'s; this module parses the command line and calls it.
"""


def add_arguments(parser):
    parser.add_argument("--config", required=True, help="YAML run configuration (configs/*.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT from its last checkpoint")
    parser.add_argument("--manifest", help="override data.manifest")
    parser.add_argument("--cache", help="override data.cache")
    parser.add_argument("--out", help="override out (the run directory)")


def run(args):
    from model.training import fit
    fit(args.config, resume=args.resume, manifest=args.manifest, cache=args.cache, out=args.out)
    return 0
