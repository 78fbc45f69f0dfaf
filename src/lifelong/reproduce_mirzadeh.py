"""Reproduction protocols of Mirzadeh et al.: Stable SGD (NeurIPS 2020) and MC-SGD (ICLR 2021).

    lifelong reproduce mirzadeh-permuted-mnist [--seeds 0,1,2] [--workers 2] [--record]
    lifelong reproduce mirzadeh-rotated-mnist

Both papers' 20-task MNIST comparison (Stable SGD: Table 2; MC-SGD: its comparison table, which
repeats the Stable SGD paper's baselines): one epoch per task, minibatches of 10, an MLP
784-256-256-10 with one shared head (domain-incremental), average accuracy over the 20 tasks after
the last. `mirzadeh_protocols` builds them as `lifelong.reproduce.Protocol` objects; it imports
that module only when called, so `lifelong.reproduce` can register them without an import cycle.

The data, as the official codes build it (github imirzadeh/stable-continual-learning
``stable_sgd/data_utils.py`` and imirzadeh/CL-LinearModeConnectivity ``core/data_utils.py``):

- every task trains on the whole MNIST training set (60,000 images, no subsampling) and is
  scored on the whole test set; here ``train_per_task=None``, ``test_per_task=None``;
- permuted MNIST: the codes leave their first task unpermuted, the `permuted-mnist` benchmark
  permutes every task (the GEM protocol); all 20 are random permutations either way;
- rotated MNIST: MC-SGD's code rotates task ``t`` (from 0) by exactly ``9 t`` degrees
  (``per_task_rotation=9``: 0 to 171), Stable SGD's by ``10 t - 10 u`` with ``u`` uniform. The
  `rotated-mnist` benchmark draws task ``t``'s angle uniformly from ``[9 t, 9 t + 9)`` with
  ``min_degrees=0, max_degrees=180`` (within 9 degrees of the code's, the same range), bilinear
  where torchvision's ``rotate`` used nearest-neighbour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lifelong.reproduce import Protocol

MLP_256 = {"hidden": [256, 256]}

#: average accuracy after the 20th task in the MC-SGD paper's comparison (its baselines: the Stable
#: SGD paper's Table 2): naive SGD, EWC, A-GEM, ER-Reservoir, Stable SGD, MC-SGD. The MC-SGD and
#: Stable SGD numbers are the issue's; the baselines' are the Stable SGD paper's Table 2 as we
#: read it before (its stored copies here hold no table text): check them against arXiv 2006.06958
#: Table 2 and 2010.04495 Table 1 before quoting them.
PAPER_ACC = {
    "permuted-mnist": {"finetune": 0.444, "ewc": 0.707, "agem": 0.657, "replay": 0.724,
                       "stable-sgd": 0.801, "mc-sgd": 0.853},
    "rotated-mnist": {"finetune": 0.463, "ewc": 0.485, "agem": 0.553, "replay": 0.692,
                      "stable-sgd": 0.708, "mc-sgd": 0.823},
}

TEXT = (
    "Stable SGD / MC-SGD papers' 20-task protocol (Mirzadeh et al. 2020, 2021; official codes): "
    "{bench}, 20 tasks, each the whole 60k MNIST training set and scored on the whole 10k test set, "
    "1 epoch, batch 10 (Stable SGD and MC-SGD 64: below), MLP 784-256-256-10 (ReLU, one shared "
    "head). Stable SGD: SGD with momentum "
    "0.8, lr {stable_lr} decayed by {gamma} after each task (task t from 1 at lr * gamma^t, floor "
    "5e-5), a fresh optimizer every epoch, dropout 0.25 after each hidden layer, minibatches of 64 "
    "(the author's corrected command; the script's 0.5 and its unparsable batch argument "
    "aside). MC-SGD: the continual model trained as Stable SGD is (dropout 0.25, minibatches of "
    "64, momentum 0.8, lr 0.1 decayed by {mc_gamma} per task from the first, floor 1e-3), then "
    "after each task, from {init:g} of the way from the previous MC-SGD solution to the new "
    "continual one, one pass of SGD (momentum 0.8, lr {mc_lr}) in minibatches of 16 on the mean "
    "loss over 6 points (a = 0, 0.2, ..., 1) of the two lines, the old one on a memory of 10 "
    "random training images per task, the new one on 200 images of the new task (dropout off). "
    "The baselines as the papers ran them through the A-GEM code: lr 0.1, one "
    "memory example per class and task (200 in all): A-GEM with a reference batch of 10, "
    "ER-Reservoir with a replay batch of 10, EWC with strength 10 (lamb 20 here) on one running "
    "Fisher of squared minibatch gradients; naive SGD (finetune) at lr 0.05, the steady-state step "
    "of the papers' momentum-0.8 SGD at lr 0.01. ACC: mean accuracy over the 20 tasks after the last."
)


#: MC-SGD's continual chain in both protocols: Stable SGD's regime (dropout 0.25, minibatches of
#: 64, lr 0.1), inside the code's permuted-MNIST search space (dropout [0, 0.25], seq_batch_size
#: {16, 32, 64}, seq_lr {0.1, 0.05, 0.01}); found by the seed-0 search of `MC_SEARCH`.
MC_DROPOUT, MC_BATCH = 0.25, 64
#: the line step of both protocols: the code's last LMC (one step per minibatch of 16, one pass)
#: at a rate inside its search space (lmc_lr [5e-4, 5e-3]; ours = 21/16 of it at 5 line samples)
MC_LINE = {"lr": 0.1, "mc_batch_size": 16, "mc_epochs": 1}


def _baselines(bench: str) -> tuple[Any, ...]:
    from lifelong.reproduce import MethodSetting

    return (
        MethodSetting("finetune", {"lr": 0.05},
                      note="the papers' naive SGD: momentum 0.8 at lr 0.01, no decay, no dropout; "
                      "finetune has no momentum, so lr 0.01 / (1 - 0.8)"),
        MethodSetting("ewc", {"lr": 0.1, "lamb": 20.0, "variant": "merged", "fisher_batch": 32,
                              "fisher_samples": 3200},
                      note="the A-GEM code's EWC: synap_stgth 10 times sum F (w - w*)^2 (lamb = 2 x "
                      "10), one running Fisher of squared minibatch-32 gradients (about its last "
                      "100), the latest anchor; its minibatch 32, ours 10"),
        MethodSetting("agem", {"lr": 0.1, "memories_per_class": 1, "reference_batch_size": 10},
                      note="--mem-size 1 --eps-mem-batch 10 of replicate_mnist.sh"),
        MethodSetting("replay", {"lr": 0.1, "buffer": "reservoir", "memory_size": 200,
                                 "replay_batch_size": 10},
                      note="ER-Reservoir: mem-size 1 x 20 tasks x 10 classes"),
    )


def _protocol(bench: str, stable: dict[str, Any], mc: dict[str, Any], stable_note: str,
              mc_note: str, notes: str) -> Protocol:
    from lifelong.reproduce import MethodSetting, Protocol, above, near

    acc = PAPER_ACC[bench]
    merged_mc = {"lr": 0.05, "gamma": 0.8, "momentum": 0.8, "min_lr": 1e-3, "memory_per_task": 10,
                 "current_examples": 200, "line_samples": 5, "init_position": 0.5, "mc_lr": 0.15,
                 "mc_epochs": 1, **mc}
    return Protocol(
        name=f"mirzadeh-{bench}",
        paper="Mirzadeh, Farajtabar, Pascanu & Ghasemzadeh, Understanding the Role of Training "
              "Regimes in Continual Learning, NeurIPS 2020 (Stable SGD); Mirzadeh, Farajtabar, "
              "Gorur, Pascanu & Ghasemzadeh, Linear Mode Connectivity in Multitask and Continual "
              "Learning, ICLR 2021 (MC-SGD)",
        protocol=TEXT.format(bench=bench, stable_lr=stable["lr"], gamma=stable["gamma"],
                             mc_lr=merged_mc["mc_lr"], init=merged_mc["init_position"],
                             mc_gamma=merged_mc["gamma"]),
        benchmark=bench,
        benchmark_params={"n_tasks": 20, "train_per_task": None, "test_per_task": None},
        model_params=MLP_256,
        methods=(
            *_baselines(bench),
            MethodSetting("stable-sgd", stable, {"dropout": 0.25}, note=stable_note, batch_size=64),
            MethodSetting("mc-sgd", merged_mc, {"dropout": MC_DROPOUT}, note=mc_note,
                          batch_size=MC_BATCH),
        ),
        paper_numbers={method: {"acc": value} for method, value in acc.items()},
        goals=(near("mc-sgd", "acc", acc["mc-sgd"], 0.02),
               near("stable-sgd", "acc", acc["stable-sgd"], 0.02),
               above("mc-sgd", ["stable-sgd", "replay", "agem", "ewc", "finetune"]),
               above("stable-sgd", ["finetune"])),
        epochs=1,
        batch_size=10,
        seeds=(0, 1, 2),
        notes=notes,
    )


COMMON_NOTES = (
    "Where ours differs from the papers, and why. The baselines train on minibatches of 10 (the "
    "Stable SGD paper's protocol; their A-GEM-code runs used 32). Stable SGD trains on 64: the "
    "script's own Stable SGD lines cannot run ('--hiddens 256--batch-size 10' is one argument) "
    "and the author's corrected command (rotated MNIST, issue #5) uses 64. At batch 10 its "
    "first-task rate 0.08 with momentum 0.8 trains noisily (learning accuracy 0.81-0.92) and it "
    "forgets heavily: ACC 0.480 on permuted and 0.599 on rotated MNIST (seed 0) against 0.797 and "
    "0.732 at 64 (the papers: 0.801, 0.708); with PyTorch's default init (the code's MLP) instead "
    "of Xavier 0.447, with dropout 0.5 0.306. MC-SGD's papers' numbers come from an NNI search "
    "of 1500 trials per "
    "benchmark (config/lmc_perm_20_offline_space.json and lcm_20_offline_space.json: dropout, lr "
    "decay, batch sizes, lmc_lr, the initial position, line samples) whose chosen settings are not "
    "published; the research code's one written configuration (rotated MNIST, experiment_2.py: "
    "lr 0.05, batch 16, no dropout, init_position 0.05, lmc_lr 0.15) gives 0.55-0.57 on permuted "
    "and 0.69 on rotated MNIST here with one full-batch line step and init_position 0.5 (the "
    "settings recorded before), and 0.40 / 0.57 with the code's last line step (a step per "
    "minibatch of 16) at its 0.05. A search of 17 settings on permuted and 4 on rotated MNIST "
    "inside the code's spaces, seed 0 (the table below), found Stable SGD's chain best: 0.819 "
    "on permuted (0.827 with 3 line passes, "
    "outside the space's lmc_epochs 1) and 0.740 on rotated MNIST, still 3.4 and 8.3 points below "
    "the papers after 1500 trials each. "
    "EWC on permuted MNIST stays near finetune (0.443 against the papers' 0.707) at the A-GEM "
    "code's strength (synap_stgth 10, its default, which replicate_mnist.sh never overrides; its "
    "Fisher, like ours, squares minibatch-mean gradients); at the code's minibatch 32 and 50,000 "
    "images per task it gives 0.498, at lamb 200 (ten times the code's) 0.631 (seed 0): the "
    "papers' EWC number needs a stronger penalty than the code's default on our Fisher. "
    "Permuted MNIST permutes the first task too; rotated MNIST draws each task's angle inside a "
    "9-degree bin instead of MC-SGD's exact multiples of 9 (module doc of "
    "`lifelong.reproduce_mirzadeh`). MC-SGD's line loss is the plain mean cross-entropy with the "
    "points weighted equally (the code's running sums weigh them 6, 5, ..., 1 and divide by its "
    "minibatch; `lifelong.methods.mc_sgd`). The papers also report forgetting (mean drop from each "
    "task's best accuracy): our `forgetting` column of the run records. Multitask training (the "
    "papers' upper bound) is left out: `joint` over 20 x 60k images costs 10 times "
    "the other methods."
)


#: The seed-0 search behind MC-SGD's settings (ACC after 20 tasks, `lifelong run --benchmark
#: permuted-mnist --method mc-sgd --tasks 20 --param n_tasks=20 --param train_per_task=none
#: --param test_per_task=none --param model.hidden=256,256 --param ...`), recorded 2026-11-21.
MC_SEARCH = """MC-SGD search, seed 0 (chain: lr 0.1, dropout 0.25, batch 64 unless said; line: 5
samples, one pass):

| benchmark | continual chain | init_position | line step | ACC |
|---|---|---|---|---|
| permuted | gamma 0.8 | 0.5 | full batch, mc_lr 0.005 | 0.812 |
| permuted | gamma 0.8 | 0.3 | full batch, mc_lr 0.005 | 0.804 |
| permuted | gamma 0.8 | 0.2 | full batch, mc_lr 0.005 | 0.785 |
| permuted | gamma 0.6 | 0.3 | full batch, mc_lr 0.005 | 0.796 |
| permuted | gamma 0.8, batch 32 | 0.3 | full batch, mc_lr 0.005 | 0.742 |
| permuted | gamma 0.8, lr 0.05, batch 16 | 0.3 | full batch, mc_lr 0.005 | 0.735 |
| permuted | gamma 0.8 | 0.3 | batch 16, mc_lr 0.0066 | 0.817 |
| permuted | gamma 0.8 | 0.5 | batch 16, mc_lr 0.0066 | **0.819** (recorded) |
| permuted | gamma 0.8 | 0.4 | batch 16, mc_lr 0.0066, 10 samples | 0.819 |
| permuted | gamma 0.8 | 0.4 | batch 16, mc_lr 0.0066, 3 passes | 0.827 |
| permuted | gamma 0.7 | 0.4 | batch 16, mc_lr 0.0066 | 0.813 |
| permuted | gamma 0.9 | 0.4 | batch 16, mc_lr 0.0066 | 0.781 |
| permuted | gamma 0.8 | 0.4 | batch 16, mc_lr 0.02 | 0.814 |
| permuted | gamma 0.8 | 0.5 | batch 16, mc_lr 0.02, 10 samples | 0.814 |
| permuted | gamma 0.8 | 0.5 | batch 16, mc_lr 0.04, 15 samples | 0.798 |
| permuted | gamma 0.8 | 0.5 | batch 16, mc_lr 0.15 | 0.572 |
| permuted | experiment_2.py: lr 0.05, batch 16, no dropout | 0.05 | batch 16, mc_lr 0.2 | 0.398 |
| rotated | gamma 0.55 | 0.25 | batch 16, mc_lr 0.013 | **0.740** (recorded) |
| rotated | gamma 0.55 | 0.5 | batch 16, mc_lr 0.0066 | 0.707 |
| rotated | gamma 0.8 | 0.5 | batch 16, mc_lr 0.0066 | 0.729 |
| rotated | experiment_2.py: lr 0.05, batch 16, no dropout | 0.05 | batch 16, mc_lr 0.2 | 0.567 |

Our mc_lr is 21/16 of the code's lmc_lr at 5 line samples and minibatch 16 (`lifelong.methods.mc_sgd`)."""


def mirzadeh_protocols() -> dict[str, Protocol]:
    """The two protocols by name (for ``PROTOCOLS.update(...)`` in `lifelong.reproduce`)."""
    protocols = (
        _protocol(
            "permuted-mnist",
            stable={"lr": 0.1, "gamma": 0.8},
            mc={**MC_LINE, "gamma": 0.8, "init_position": 0.5, "mc_lr": 0.0066},
            stable_note="replicate_experiment_2.sh: lr 0.1, gamma 0.8; dropout 0.25 (issue #1)",
            mc_note="the best one-pass setting of the seed-0 search (`MC_SEARCH`): Stable SGD's "
                    "chain, init_position 0.5, mc_lr 0.0066 (the code's lmc_lr 0.005)",
            notes=COMMON_NOTES + "\n\n" + MC_SEARCH,
        ),
        _protocol(
            "rotated-mnist",
            stable={"lr": 0.1, "gamma": 0.55},
            mc={**MC_LINE, "gamma": 0.55, "init_position": 0.25, "mc_lr": 0.013},
            stable_note="the author's corrected command (issue #5): lr 0.1, gamma 0.55, dropout "
                        "0.25, batch 64",
            mc_note="the best setting of the seed-0 search (`MC_SEARCH`): Stable SGD's rotated "
                    "chain (gamma 0.55), init_position 0.25 (the rotated search space's largest), "
                    "mc_lr 0.013 (the code's 0.01)",
            notes=COMMON_NOTES + "\n\n" + MC_SEARCH,
        ),
    )
    return {p.name: p for p in protocols}
