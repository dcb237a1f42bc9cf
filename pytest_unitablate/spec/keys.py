"""The spec format's tables of keys: the single source of truth (torch-free).

The loader (:mod:`pytest_unitablate.spec.loader`) walks them to validate a spec, and
:mod:`pytest_unitablate.spec.schema` generates the JSON Schema from them, so the two
cannot drift apart. Each key maps to the text that explains it.

Example::

    >>> "min_drop" in TARGET_KEYS, REQUIRED_TOP
    (True, ('unitablate', 'model', 'data', 'checks'))
"""

from __future__ import annotations

import re

from pytest_unitablate.spec.model import CheckMode

TOP_KEYS: dict[str, str] = {
    "unitablate": "format version, required: 1",
    "model": "pytest fixture name or 'package.module:callable' returning the model",
    "data": "fixture name or 'package.module:callable': (inputs, labels) batches or a "
            "Dataset; or a mapping of named groups ({induction: induct_prompts, copy: "
            "copy_prompts}), each a target like a class, overall all of them",
    "classes": "optional list of class names, index order",
    "ablation": "zero | mean | resample | {constant: <number>} | {resample: {draws: K}}; "
                "default zero",
    "reference": "optional fixture name or 'package.module:callable': the data mean and "
                 "resample ablation take their values from (default: the evaluation data); "
                 "a check may name its own",
    "checks": "list of checks, required",
    "ranking_data": "optional separate split used to rank units for top_units",
    "channel_dim": "which dimension of a layer's output holds its units (1 for N,C,H,W and "
                   "N,C,L; -1 for N,T,C token features and channels-last N,H,W,C); "
                   "required for any output the model's modules do not show to be N,C or "
                   "channels-first N,C,H,W; a check may override it",
    "unit": "what a unit is: channel (default) or head (attention heads); a check may "
            "override it",
    "position": "for a language model's (N, T, V) logits: which position's next-token "
                "logits are judged, an index (-1) or last (the last position the batch's "
                "attention_mask keeps); the labels are then target token ids; a check may "
                "override it",
    "num_heads": "for unit: head checks, how many heads each layer has where neither the "
                 "module, its attention block nor the model's config says; a check may "
                 "override it",
    "min_examples": "minimum examples a class target needs, default 1",
    "output": "which part of the model's output holds the logits: an index into a tuple "
              "or list output, or a key of a dict (or attribute of a ModelOutput)",
    "provenance": "written by record mode: environment of the recorded numbers",
    "signatures": "written by record mode: {file: <sidecar next to the spec>, sha256: <hash>} "
                  "of the signatures that identity: signature checks match",
}
SIGNATURES_KEYS: dict[str, str] = {
    "file": "the sidecar's file name, relative to the spec (default <stem>.signatures.json)",
    "sha256": "sha256 of the sidecar file as record mode wrote it",
}
REQUIRED_TOP = ("unitablate", "model", "data", "checks")
CHECK_KEYS: dict[str, str] = {
    "layer": "dotted module name from model.named_modules()",
    "units": "list of 0-based unit indices, ablated together",
    "any_unit": "layer-wide: at least `at_least` single units meet `expect`",
    "every_unit": "layer-wide: every single unit meets `expect`",
    "top_units": "ablate together the k units most damaging to `class`",
    "expect": "targets (class name, class index or overall) -> constraints",
    "ablation": "override of the spec's ablation for this check",
    "marks": "pytest marks: [xfail] or [{skipif: {condition: ..., reason: ...}}]",
    "name": "optional label used in the test id instead of layer-u<units>",
    "identity": "what a named unit is: index (default) or signature (found again by its "
                "recorded signature after a retrain); or {by: signature, min_similarity: 0.75}",
    "channel_dim": "this check's channel dimension (overrides the spec's)",
    "unit": "this check's kind of unit: channel or head (overrides the spec's)",
    "position": "this check's next-token position (overrides the spec's)",
    "num_heads": "for unit: head, how many heads the layer has, where the module does not "
                 "say (num_heads, num_attention_heads, n_head, n_heads)",
    "reference": "this check's reference data for mean and resample ablation (overrides "
                 "the spec's)",
}
UNIT_KINDS = ("channel", "head")
IDENTITY_KEYS: dict[str, str] = {
    "by": "index or signature",
    "min_similarity": "below this cosine similarity no unit matches (default 0.75)",
}
IDENTITY_KINDS = ("index", "signature")
MODE_KEYS: tuple[CheckMode, ...] = ("units", "any_unit", "every_unit", "top_units")
LAYER_WIDE_KEYS: dict[str, dict[str, str]] = {
    "any_unit": {"expect": "targets -> constraints", "at_least": "how many units, default 1"},
    "every_unit": {"expect": "targets -> constraints"},
    "top_units": {
        "k": "number of units to ablate together",
        "class": "the class whose most damaging units are chosen",
        "expect": "targets -> constraints",
    },
}
TARGET_KEYS: dict[str, str] = {
    "min_drop": "the drop must be at least this many percentage points, e.g. 20%",
    "max_drop": "the drop must be at most this many percentage points, e.g. 1%",
    "min_relative_drop": "drop / baseline must be at least this, e.g. 50%",
    "max_relative_drop": "drop / baseline must be at most this",
    "min_logprob_drop": "the mean drop of log p(true class) over the target's examples must "
                        "be at least this many nats: a plain number, e.g. 0.5",
    "max_logprob_drop": "the mean drop of log p(true class) must be at most this many nats, "
                        "e.g. 0.05",
    "min_accuracy": "the target's own accuracy (no ablation) must be at least this, e.g. "
                    "85%: catches a class forgotten by a fine-tune",
    "warn_margin": "warn (but pass) when within this many points of failing (accuracy "
                   "constraints; log-prob constraints have no warn band)",
    "confidence": "judge the bound of this confidence interval, e.g. 95%",
}
ABLATION_NAMES = ("zero", "mean", "resample")
PERCENT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*%\s*$")
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*$")
IDENT = re.compile(r"^[A-Za-z_]\w*$")
#: A fixture name or an import path (model:, data:, ranking_data:, reference:).
REFERENCE = re.compile(f"{IDENT.pattern}|{IMPORT_PATH.pattern}")
ID_SAFE = re.compile(r"^(?!.*::)[\w:+\-.]+$")
