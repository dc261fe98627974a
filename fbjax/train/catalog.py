"""The one table of objectives: every loss fbjax ships, bound to the batch layout it reads.

Each :class:`Entry` names an objective, its feedback family, the pure loss, the binding that
makes an :class:`~fbjax.train.objective.Objective` of it (``bind(**hparams)``, or
``bind(size, **hparams)`` for group objectives), the paper, the experiment modules that
reproduce it, and the parity golden that checks it against a reference implementation. The
tests derive from this table: the golden list (``tests/objectives/test_goldens.py``), the
property tests of every paired-preference loss (``tests/objectives/test_catalog.py``, inputs
built from the loss's argument names) and the experiment coverage (``tests/test_experiments.py``);
the README's objective table is checked against it. Adding a loss is one function in its family's
module and one entry here.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from fbjax.objectives import binary, language, negative, preference, supervised
from fbjax.train import language_inputs as li
from fbjax.train import presets
from fbjax.train.objective import Objective

SUPERVISED = "supervised"
PAIRED = "paired preference"
LISTWISE = "ranked lists"
BINARY = "unpaired binary"
NEGATIVE = "negative-only"
LANGUAGE = "language feedback"


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    family: str
    loss: Callable
    bind: Callable[..., Objective]
    paper: str = ""
    experiments: tuple[str, ...] = ()
    # tests/goldens/<golden>.json: loss, gradients and metrics from TRL or the paper's code.
    golden: str | None = None


OBJECTIVES: tuple[Entry, ...] = (
    Entry("sft", SUPERVISED, supervised.nll, presets.sft),
    Entry("dpo", PAIRED, preference.dpo, presets.dpo,
          "Rafailov et al. 2023, arXiv:2305.18290", ("dpo_rafailov2023",), "dpo"),
    Entry("dpop", PAIRED, preference.dpop, presets.paired(preference.dpop),
          "Pal et al. 2024, arXiv:2402.13228", ("dpop_pal2024",)),
    Entry("cdpo", PAIRED, preference.cdpo, presets.cdpo, "Mitchell 2023",
          ("cdpo_mitchell2023",), "cdpo"),
    Entry("rdpo", PAIRED, preference.rdpo, presets.rdpo,
          "Chowdhury et al. 2024, arXiv:2403.00409", ("rdpo_chowdhury2024",), "rdpo"),
    Entry("ipo", PAIRED, preference.ipo, presets.ipo, "Azar et al. 2023, arXiv:2310.12036",
          ("ipo_azar2023",), "ipo"),
    Entry("hinge", PAIRED, preference.hinge, presets.hinge,
          "Zhao et al. 2023, arXiv:2305.10425", (), "hinge"),
    Entry("slic", PAIRED, preference.slic, presets.slic, "Zhao et al. 2023, arXiv:2305.10425",
          ("slic_zhao2023",), "slic"),
    Entry("simpo", PAIRED, preference.simpo, presets.simpo,
          "Meng et al. 2024, arXiv:2405.14734", ("simpo_meng2024",), "simpo"),
    Entry("orpo", PAIRED, preference.orpo, presets.orpo, "Hong et al. 2024, arXiv:2403.07691",
          ("orpo_hong2024",), "orpo"),
    Entry("cpo", PAIRED, preference.cpo, presets.cpo, "Xu et al. 2024, arXiv:2401.08417",
          ("cpo_xu2024",), "cpo"),
    Entry("reward_model", PAIRED, preference.bradley_terry, presets.reward_model,
          "Stiennon et al. 2020, arXiv:2009.01325", ("rm_stiennon2020",), "bradley_terry"),
    Entry("reward_model_margin", PAIRED, preference.bradley_terry_margin,
          presets.reward_model_margin, "Touvron et al. 2023, arXiv:2307.09288", (),
          "bradley_terry_margin"),
    Entry("kwise_reward_model", LISTWISE, preference.kwise_bradley_terry,
          presets.kwise_reward_model, "Ouyang et al. 2022, arXiv:2203.02155", (),
          "kwise_bradley_terry"),
    Entry("plackett_luce", LISTWISE, preference.plackett_luce, presets.plackett_luce,
          "Rafailov et al. 2023, arXiv:2305.18290, App. A.3", ("plackett_luce_rafailov2023",),
          "plackett_luce"),
    Entry("irpo", LISTWISE, preference.irpo, presets.irpo, "Wu et al. 2025, arXiv:2504.15477",
          ("irpo_wu2025",), "irpo"),
    Entry("kto", BINARY, binary.kto, presets.kto, "Ethayarajh et al. 2024, arXiv:2402.01306",
          ("kto_ethayarajh2024",), "kto"),
    Entry("bco", BINARY, binary.bco, presets.bco, "Jung et al. 2024, arXiv:2404.04656",
          ("bco_jung2024",), "bco"),
    Entry("bco_udm", BINARY, binary.bco_udm, presets.bco_udm,
          "Jung et al. 2024, arXiv:2404.04656", (), "bco_udm"),
    Entry("pmpo", BINARY, binary.pmpo, presets.pmpo,
          "Abdolmaleki et al. 2024, arXiv:2410.04166", ("pmpo_abdolmaleki2024",), "pmpo"),
    Entry("unlikelihood", NEGATIVE, negative.unlikelihood, presets.unlikelihood,
          "Welleck et al. 2019, arXiv:1908.04319", (), "unlikelihood"),
    Entry("unlikelihood_mle", NEGATIVE, negative.unlikelihood_mle, presets.unlikelihood_mle,
          "Welleck et al. 2019, arXiv:1908.04319", ("unlikelihood_welleck2019",)),
    Entry("npo", NEGATIVE, negative.npo, presets.npo, "Zhang et al. 2024, arXiv:2404.05868",
          (), "npo"),
    Entry("npo_retain", NEGATIVE, negative.npo_retain, presets.npo_retain,
          "Zhang et al. 2024, arXiv:2404.05868", ("npo_zhang2024",)),
    Entry("d2o", NEGATIVE, negative.d2o, presets.d2o, "Duan et al. 2024, arXiv:2403.03419",
          ("d2o_duan2024",), "d2o"),
    Entry("nft", NEGATIVE, negative.nft, presets.nft, "Chen et al. 2025, arXiv:2505.18116",
          ("nft_chen2025",), "nft"),
    Entry("chain_of_hindsight", LANGUAGE, language.nll_with_pretraining, li.chain_of_hindsight,
          "Liu et al. 2023, arXiv:2302.02676", ("coh_liu2023",)),
    Entry("ilf", LANGUAGE, supervised.nll, li.ilf, "Scheurer et al. 2023, arXiv:2303.16755",
          ("ilf_scheurer2023",)),
    Entry("leti", LANGUAGE, language.nll_with_pretraining, li.leti,
          "Wang et al. 2023, arXiv:2305.10314", ("leti_wang2023",)),
    Entry("cut", LANGUAGE, language.cut, li.cut, "Xu et al. 2023, arXiv:2312.14591",
          ("cut_xu2023",)),
    Entry("c3po", LANGUAGE, language.c3po, li.c3po, "Stephan et al. 2024, arXiv:2402.10893",
          ("c3po_stephan2024",)),
    Entry("alt", LANGUAGE, language.alt, li.alt, "Lloret et al. 2024, arXiv:2407.16970",
          ("alt_lloret2024",)),
    Entry("feedback_conditioned", LANGUAGE, supervised.nll, li.feedback_conditioned,
          "Luo et al. 2025, arXiv:2509.22638", ("fcp_luo2025",)),
    Entry("conditional_training", LANGUAGE, supervised.nll, li.conditional_training,
          "Korbak et al. 2023, arXiv:2302.08582", ("conditional_korbak2023",)),
    Entry("sami", LANGUAGE, language.sami, li.sami, "Fränken et al. 2024, arXiv:2404.14313",
          ("sami_franken2024",)),
    Entry("token_weighted", LANGUAGE, language.token_weighted, li.token_weighted,
          "Wu et al. 2023, arXiv:2306.01693"),
)

_BY_NAME = {e.name: e for e in OBJECTIVES}
if len(_BY_NAME) != len(OBJECTIVES):
    raise ImportError("fbjax.train.catalog: two entries share a name")


def get(name: str) -> Entry:
    """The entry called ``name``, or a KeyError listing the names there are."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no objective {name!r}; known: {sorted(_BY_NAME)}") from None
