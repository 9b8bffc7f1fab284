"""Would averaging several PropMasks help? A probe on the tuning objects (never the evaluation set).

The shipped `lite` model runs as it ships beside the same Box2Mask with its PropMask replaced by
the mean of the logits of several PropMasks of one architecture (say the three seeds of v2.1's
recipe, results/slice_context_cpu/), paired over the tuning objects of tune_stop_rule.py. An
ensemble costs one PropMask per member, so it could only be a GPU setting; the question is how
much of the in-plane loss is the variance of one training run.

    python benchmarks/propmask_ensemble.py --member runs/models/v2_1_seed2 --member runs/models/v2_1_seed3 \\
        --objects 30 --real 56 --prompts mask --rows-out R.csv
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from propsam.engine.segmenter import Segmenter
from tune_stop_rule import VARIANTS, add_tuning_arguments, chosen_tuning_objects, run, table, write_rows


class AveragedPropMask(nn.Module):
    """PropMasks of one configuration as one: the mean of their mask and presence logits."""

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.config = nets[0].config
        self.memory_attention = nets[0].memory_attention

    def forward(self, *inputs):
        outs = [net(*inputs) for net in self.nets]
        averaged = {"masks": [torch.stack([o["masks"][0] for o in outs]).mean(0)]}
        if "presence" in outs[0]:
            averaged["presence"] = torch.stack([o["presence"] for o in outs]).mean(0)
        return averaged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--member", action="append", required=True, help="a model folder whose PropMask joins lite's")
    add_tuning_arguments(parser)
    parser.add_argument("--prompts", default="mask,box")
    parser.add_argument("--rows-out")
    args = parser.parse_args(argv)
    objects = chosen_tuning_objects(args)
    prompts = tuple(p.strip() for p in args.prompts.split(","))
    shipped = {"leak limit 2x": VARIANTS["leak limit 2x"]}
    rows = run("lite", objects, shipped, True, prompts, True)
    ensemble = Segmenter.load("lite", "cpu")
    ensemble.propmask = AveragedPropMask([ensemble.propmask] + [Segmenter.load(m, "cpu").propmask for m in args.member])
    rows += run(f"lite + {len(args.member)} averaged", objects, shipped, True, prompts, True, seg=ensemble)
    print(table(rows, "PropMask ensemble probe"))
    if args.rows_out:
        write_rows(args.rows_out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
