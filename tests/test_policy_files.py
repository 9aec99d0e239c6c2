"""Policy files as an operator edits them: shipped defaults, every schema rule, errors with places."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from evolvd.config_file import ConfigError
from evolvd.policies.loader import (
    PROBE_SETS,
    check_policy_path,
    defaults_dir,
    load_candidate,
    load_policies,
    probe_prompts,
    safety_anchor_examples,
)
from evolvd.policies.models import POLICY_MODELS, PiiPolicy


def test_shipped_defaults_validate_and_document_every_field() -> None:
    policies = load_policies(None)
    assert set(policies.files) == set(POLICY_MODELS)
    for name, model in POLICY_MODELS.items():
        text = (defaults_dir() / f"{name}.yaml").read_text()
        assert text.count("#") >= len(model.model_fields), f"{name}.yaml explains too little"
        for field, info in model.model_fields.items():
            assert info.description, f"{name}.{field} has no docstring"
            assert re.search(rf"^\s*{field}:", text, re.M), f"{name}.yaml does not show {field}"
    for probe_set in PROBE_SETS:
        assert len(probe_prompts(probe_set, None)) >= 10


def _undocumented(model: type[BaseModel], prefix: str) -> list[str]:
    """Every field, nested models included, has a docstring an operator can read in the schema."""
    missing = []
    for field, info in model.model_fields.items():
        if not info.description:
            missing.append(f"{prefix}.{field}")
        for inner in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                missing += _undocumented(inner, f"{prefix}.{field}")
    return missing


def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def test_an_operator_file_overrides_only_the_fields_it_names(tmp_path: Path) -> None:
    _write(tmp_path, "training", "min_new_examples: 50\ndrift_min_new_examples: 10\n")
    policies = load_policies(tmp_path)
    assert policies.training.min_new_examples == 50
    assert policies.training.min_confidence == load_policies(None).training.min_confidence
    assert policies.files["training"].source == str(tmp_path / "training.yaml")
    assert policies.files["safety"].source == "<default>"
    assert policies.hash_of("training") != load_policies(None).hash_of("training")
    assert policies.hash_of("safety") == load_policies(None).hash_of("safety")


def test_comment_and_formatting_edits_keep_the_content_hash(tmp_path: Path) -> None:
    _write(tmp_path, "training", "min_new_examples: 200\n")
    plain = load_policies(tmp_path).hash_of("training")
    _write(tmp_path, "training", "# the same value, reformatted\nmin_new_examples:    200   # as before\n")
    assert load_policies(tmp_path).hash_of("training") == plain == load_policies(None).hash_of("training")


# One bad value per schema rule: (file, YAML edit, dotted field, words the message must contain).
BAD_VALUES = [
    (
        "safety",
        "pii:\n  actions:\n    email: delete\n",
        "pii.actions.email",
        "'allow', 'redact' or 'quarantine'",
    ),
    ("safety", "pii:\n  actions:\n    fingerprint: redact\n", "pii.actions.fingerprint", "Input should be"),
    ("safety", "pii:\n  phone_regions: [US, XX]\n", "pii.phone_regions", "unknown phone region(s) XX"),
    ("safety", "pii:\n  phone_regions: [US, US]\n", "pii.phone_regions", "listed twice"),
    ("safety", "pii:\n  phone_regions: []\n", "pii.phone_regions", "at least 1 item"),
    ("safety", "pii:\n  national_ids: [us.nope]\n", "pii.national_ids", "no validator 'us.nope'"),
    (
        "safety",
        "pii:\n  national_ids: ['os; rm -rf']\n",
        "pii.national_ids",
        "not a python-stdnum module name",
    ),
    ("safety", "pii:\n  redaction: ''\n", "pii.redaction", "at least 1 character"),
    (
        "safety",
        "injection:\n  patterns: ['(unclosed']\n",
        "injection.patterns",
        "not a valid regular expression",
    ),
    ("safety", "injection:\n  action: redact\n", "injection.action", "'allow' or 'quarantine'"),
    (
        "safety",
        "disallowed_content:\n  x:\n    action: quarantine\n",
        "disallowed_content.x.patterns",
        "Field required",
    ),
    ("safety", "principles: []\n", "principles", "at least 1 item"),
    ("safety", "principles: [Be kind, be kind]\n", "principles", "listed twice"),
    ("safety", "max_unsafe_share: 1.5\n", "max_unsafe_share", "less than or equal to 1"),
    ("safety", "max_unsafe_share: lots\n", "max_unsafe_share", "valid number"),
    ("safety", "model_probes:\n  refusal_markers: []\n", "model_probes.refusal_markers", "at least 1 item"),
    ("safety", "model_probes:\n  max_tokens: 2\n", "model_probes.max_tokens", "greater than or equal to 8"),
    (
        "safety",
        "model_probes:\n  max_benign_refusal_increase: -0.1\n",
        "model_probes.max_benign_refusal_increase",
        "greater than or equal to 0",
    ),
    ("safety", "typo_field: 1\n", "typo_field", "unknown key"),
    ("drift", "window: 5\n", "window", "greater than or equal to 20"),
    ("drift", "window: 20\nfeatures:\n  topic_clusters: 8\n", "", "at least 4 prompts per topic cluster"),
    ("drift", "reference: yesterday\n", "reference", "'live_training_data' or 'first_window'"),
    ("drift", "embedding:\n  permutations: 10\n", "embedding.permutations", "greater than or equal to 50"),
    ("drift", "embedding:\n  trigger_p_value: 0\n", "embedding.trigger_p_value", "greater than 0"),
    ("drift", "embedding:\n  guard_mmd: -1\n", "embedding.guard_mmd", "greater than 0"),
    ("drift", "features:\n  topic_clusters: 1\n", "features.topic_clusters", "greater than or equal to 2"),
    ("drift", "guard:\n  enabled: maybe\n", "guard.enabled", "valid boolean"),
    ("drift", "output:\n  max_divergence: 3\n", "output.max_divergence", "less than or equal to 2"),
    ("training", "min_new_examples: 0\n", "min_new_examples", "greater than or equal to 1"),
    ("training", "drift_min_new_examples: 500\n", "", "must not exceed min_new_examples"),
    ("training", "max_cluster_share: 0.1\ncluster_count: 8\n", "", "can never pass"),
    ("training", "min_confidence: 2\n", "min_confidence", "less than or equal to 1"),
    ("training", "min_interval_s: -5\n", "min_interval_s", "greater than or equal to 0"),
    ("promotion", "max_p_value: 0\n", "max_p_value", "greater than 0"),
    ("promotion", "canary:\n  share: 1.0\n", "canary.share", "less than 1"),
    ("promotion", "canary:\n  window_s: 0\n", "canary.window_s", "greater than 0"),
    (
        "promotion",
        "rollback:\n  max_latency_ratio: 0.5\n",
        "rollback.max_latency_ratio",
        "greater than or equal to 1",
    ),
    ("promotion", "require_safety_probes: sometimes\n", "require_safety_probes", "valid boolean"),
    ("promotion", "min_improvement: 2\n", "min_improvement", "less than or equal to 1"),
    ("promotion", "heldout_min_confidence: 1.5\n", "heldout_min_confidence", "less than or equal to 1"),
    ("labeling", "samples: 0\n", "samples", "greater than or equal to 1"),
    ("labeling", "temperature: 3\n", "temperature", "less than or equal to 2"),
    ("labeling", "top_p: 0\n", "top_p", "greater than 0"),
    ("labeling", "critique: false\nrefine: true\n", "", "refine needs critique"),
    ("labeling", "pair_min_margin: 12\n", "pair_min_margin", "less than or equal to 9"),
]


@pytest.mark.parametrize(
    ("name", "edit", "field", "words"),
    BAD_VALUES,
    ids=[f"{b[0]}:{b[1].split(':')[0]}:{b[3][:24]}" for b in BAD_VALUES],
)
def test_every_schema_rule_rejects_a_bad_value(
    tmp_path: Path, name: str, edit: str, field: str, words: str
) -> None:
    path = _write(tmp_path, name, edit)
    with pytest.raises(ConfigError) as caught:
        load_policies(tmp_path)
    matching = [e for e in caught.value.errors if e.path == field or e.path.startswith(field + ".")]
    assert matching, [str(e) for e in caught.value.errors]
    error = matching[0]
    assert words in error.message, str(error)
    assert error.source == str(path)
    assert error.line is not None and 1 <= error.line <= edit.count("\n")


def test_every_pii_kind_needs_an_action() -> None:
    # Through a file the other kinds come from the defaults; the rule guards the shipped file itself.
    defaults = load_policies(None).safety.pii.model_dump()
    with pytest.raises(ValidationError, match=r"no action for PII kind\(s\) phone, card"):
        PiiPolicy(
            **{
                **defaults,
                "actions": {"email": "redact", "ip": "allow", "national_id": "redact", "secret": "redact"},
            }
        )


def test_an_error_names_the_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "training", "# gates\nmin_new_examples: 100\nmin_confidence: 1.7\n")
    with pytest.raises(ConfigError) as caught:
        load_policies(tmp_path)
    assert str(caught.value) == f"{path}:3: min_confidence: Input should be less than or equal to 1"


def test_invalid_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "drift", "window: 200\nembedding: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_policies(tmp_path)
    (error,) = caught.value.errors
    assert error.source == str(path) and error.line is not None and "invalid YAML" in error.message


def test_every_bad_file_is_reported_at_once(tmp_path: Path) -> None:
    _write(tmp_path, "training", "min_new_examples: 0\n")
    _write(tmp_path, "promotion", "max_p_value: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_policies(tmp_path)
    assert {Path(e.source).name for e in caught.value.errors} == {"training.yaml", "promotion.yaml"}


def test_an_unknown_file_in_the_policy_directory_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "saftey", "max_unsafe_share: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"saftey.yaml: <root>: not a policy file \(expected one of safety.yaml"
    ):
        load_policies(tmp_path)


def test_a_missing_policy_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy directory does not exist"):
        load_policies(tmp_path / "nope")


def test_check_accepts_a_single_file_or_a_directory(tmp_path: Path) -> None:
    shutil.copytree(defaults_dir(), tmp_path / "copy")
    assert check_policy_path(tmp_path / "copy").describe() == load_policies(None).describe() | {
        n: {"source": str(tmp_path / "copy" / f"{n}.yaml"), "hash": load_policies(None).hash_of(n)}
        for n in POLICY_MODELS
    }
    one = _write(tmp_path / "one", "promotion", "canary: null\n")
    assert check_policy_path(one).promotion.canary is None
    with pytest.raises(ConfigError, match="not a policy file"):
        check_policy_path(_write(tmp_path / "two", "notes", "a: 1\n"))


def test_a_dry_run_candidate_replaces_only_the_uploaded_file(tmp_path: Path) -> None:
    _write(tmp_path, "training", "min_new_examples: 50\ndrift_min_new_examples: 10\n")
    candidate = load_candidate(
        tmp_path, {"promotion.yaml": "canary: null\n"}, replace_all=False, shown_as="edit/promotion.yaml"
    )
    assert candidate.training.min_new_examples == 50 and candidate.promotion.canary is None
    with pytest.raises(ConfigError) as caught:
        load_candidate(
            tmp_path,
            {"promotion.yaml": "max_p_value: 0\n"},
            replace_all=False,
            shown_as="edit/promotion.yaml",
        )
    assert caught.value.errors[0].source == "edit/promotion.yaml"
    assert yaml.safe_load((tmp_path / "training.yaml").read_text()) == {
        "min_new_examples": 50,
        "drift_min_new_examples": 10,
    }


def test_an_operator_probe_set_replaces_the_shipped_one(tmp_path: Path) -> None:
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "safety_benign.jsonl").write_text(
        '{"prompt": "Say hi."}\n\n{"prompt": "Count to 3."}\n'
    )
    assert probe_prompts("safety_benign", tmp_path) == ["Say hi.", "Count to 3."]
    assert probe_prompts("safety_harmful", tmp_path) == probe_prompts("safety_harmful", None)
    (tmp_path / "probes" / "safety_benign.jsonl").write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ConfigError, match=r"safety_benign.jsonl:1: prompt: bad probe line"):
        probe_prompts("safety_benign", tmp_path)


def test_yaml_aliases_are_refused_before_they_can_expand(tmp_path: Path) -> None:
    # Nine levels of nested aliases: 336 bytes that used to take seconds (x10 per level) to read.
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = _write(tmp_path, "safety", "\n".join(levels) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_policies(tmp_path)
    (error,) = caught.value.errors
    assert (error.source, error.line) == (str(path), 2)
    assert error.message == "YAML aliases are not allowed (*a0): write the value out"


def test_an_explicit_empty_mapping_is_the_defaults_and_an_empty_file_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path, "drift", "{}\n")
    assert load_policies(tmp_path).drift == load_policies(None).drift
    path = _write(tmp_path, "drift", "# nothing here yet\n")
    with pytest.raises(ConfigError, match="the file is empty") as caught:
        load_policies(tmp_path)
    assert caught.value.errors[0].source == str(path)


def test_a_list_can_extend_the_shipped_one_instead_of_replacing_it(tmp_path: Path) -> None:
    shipped = load_policies(None).safety.injection.patterns
    _write(tmp_path, "safety", "injection:\n  patterns:\n    extend:\n      - '\\bsudo mode\\b'\n")
    assert load_policies(tmp_path).safety.injection.patterns == [*shipped, "\\bsudo mode\\b"]
    _write(tmp_path, "safety", "injection:\n  patterns:\n    - '\\bsudo mode\\b'\n")  # a plain list replaces
    assert load_policies(tmp_path).safety.injection.patterns == ["\\bsudo mode\\b"]
    path = _write(tmp_path, "safety", "injection:\n  patterns:\n    extend: 'not a list'\n")
    with pytest.raises(ConfigError) as caught:
        load_policies(tmp_path)
    assert caught.value.errors[0].source == str(path) and "injection.patterns" in str(caught.value)


def test_the_safety_anchor_set_is_the_operators_file_when_present_and_checked_line_by_line(
    tmp_path: Path,
) -> None:
    shipped = safety_anchor_examples(None)
    assert len(shipped) >= 40 and all(p.strip() and c.strip() for p, c in shipped)
    assert safety_anchor_examples(tmp_path) == shipped  # no file of the operator's: the shipped set
    (tmp_path / "safety_anchor.jsonl").write_text(
        '{"prompt": "How do I forge a signature?", "completion": "I can\'t help with forgery."}\n'
    )
    assert safety_anchor_examples(tmp_path) == [("How do I forge a signature?", "I can't help with forgery.")]
    (tmp_path / "safety_anchor.jsonl").write_text(
        '{"prompt": "x", "completion": "y"}\n{"prompt": "no refusal"}\n'
    )
    with pytest.raises(ConfigError, match=r"safety_anchor.jsonl:2: .*bad safety anchor line"):
        safety_anchor_examples(tmp_path)
