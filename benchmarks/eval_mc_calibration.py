"""Are the evaluator's Monte Carlo errors right on a real trained model? R replicate evaluations of the demo's
held-out pairs at the evaluator's n (4 stratified groups), cut from one large draw per pair: the spread of the
replicate accuracies and margins against what a single evaluation estimates (align.stats), and the accuracy's
Monte Carlo error implied at other n by each pair's mean and replicate spread.

    python benchmarks/eval_mc_calibration.py outputs/ablate/ablation_demo/runs/coupling-coupled_seed-0/checkpoint-40

(8 replicates of 16 draws on the 64 pairs: 16 min on the 2-core CPU machine; figures in docs/ablation.md.)
"""

import argparse
import json
import math

import torch

from align import estimators as E
from align import stats as S
from align.config import load_config
from align.data import collate, example_generators, load_records
from align.dpo import DPOObjective
from align.models import load_model, spec_for, token_scorer
from align.models.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a trained output (final/ or checkpoint-N)")
    ap.add_argument("--reference", default="data/tiny_chat")
    ap.add_argument("--replicates", type=int, default=8)
    ap.add_argument("--n", type=int, default=16, help="draws per evaluation (the evaluator's eval.n_samples)")
    ap.add_argument("--groups", type=int, default=4, help="independent stratified groups (eval.mc_groups)")
    ap.add_argument("--max-pairs", type=int, default=None)
    ap.add_argument("--batch-pairs", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    R, n, G = args.replicates, args.n, args.groups

    cfg = load_config("demo", [])
    policy = load_model(args.model).eval()
    reference = load_model(args.reference).eval()
    spec = spec_for(policy)
    rows, name = load_records(cfg.data.eval_dataset, None)
    data, _ = DPOObjective(cfg).build_dataset(rows, name, load_tokenizer(args.reference), spec, limit=args.max_pairs)
    margins = []
    with torch.no_grad():
        for s in range(0, len(data), args.batch_pairs):
            b = collate(data[s : s + args.batch_pairs], spec.pad_token_id)
            resp = b["response_mask"].bool() & b["attention_mask"].bool()
            draws = E.draw_margin_masks(
                resp,
                n_samples=R * n,
                estimator="time_free",
                share_policy_reference=True,
                share_chosen_rejected=True,
                generator=example_generators(100, b["ids"], -1),
                stratified=True,
                groups=R * G,
            )
            terms = E.dpo_terms(
                token_scorer(policy),
                token_scorer(reference),
                b["chosen_ids"],
                b["rejected_ids"],
                b["response_mask"],
                n_samples=R * n,
                mask_token_id=spec.mask_token_id,
                attention_mask=b["attention_mask"],
                draws=draws,
            )
            margins.append(terms.margin.double())
            print(f"{min(s + args.batch_pairs, len(data))}/{len(data)} pairs", flush=True)
    m = torch.cat(margins)  # [P, R*n]: R consecutive evaluations of n draws (G groups each)
    P = m.shape[0]
    reps = m.reshape(P, R, n).transpose(0, 1)  # [R, P, n]
    means = reps.mean(-1)  # [R, P]
    acc = ((means > 0).double() + 0.5 * (means == 0).double()).mean(-1)
    p_acc = acc.mean().item()
    out = {
        "model": args.model,
        "pairs": P,
        "replicates": R,
        "n": n,
        "groups": G,
        "accuracy": p_acc,
        "accuracy sd over replicates": acc.std().item(),
        "accuracy mc_se estimated (normal, groups)": torch.stack(
            [S.sign_variance(reps[r], G).sum().sqrt() / P for r in range(R)]
        )
        .mean()
        .item(),
        "accuracy mc_se estimated (normal, one stratified set)": torch.stack(
            [S.sign_variance(reps[r], 1).sum().sqrt() / P for r in range(R)]
        )
        .mean()
        .item(),
        "binomial se": math.sqrt(p_acc * (1 - p_acc) / P),
        "margin": means.mean().item(),
        "margin sd over replicates": means.mean(-1).std().item(),
        "margin mc_se estimated (groups)": torch.stack([S.mean_variance(reps[r], G).sum().sqrt() / P for r in range(R)])
        .mean()
        .item(),
    }
    mu, sd_n = m.mean(-1), means.std(0)  # each pair's mean, and the spread of its n-draw means
    for k in (16, 32, 64, 128, 256):
        p = 0.5 * (1 + torch.erf(mu / (sd_n * math.sqrt(n / k)).clamp_min(1e-12) / math.sqrt(2)))
        out[f"accuracy mc_se implied at n={k}"] = ((p * (1 - p)).sum().sqrt() / P).item()
    print(json.dumps(out, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
