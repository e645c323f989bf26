"""What a resumed run changed: every setting of the experiment is compared, safe ones pass, accepted ones are named."""

from custom.training.changes import accepted, changes_message, record_changes

SAVED = {
    "classes": ["A", "B"], "num_training": 10, "datalist": "/data/list.json", "dataset_dir": "/data",
    "image_size": 32, "network": {"_target_": "DenseNet121", "out_channels": 2},
    "nvum": {"loss": "nvum", "reg_weight": 1.0, "memory_momentum": 0.9},
    "recipe": {"learning_rate": 0.001, "batch_size": 64, "max_epochs": 6, "seed": 0, "lr_milestones": [4, 5],
               "training_items": "abc123"},
    "thresholds": {"A": 0.5},
}


def _now(**changes):
    import copy

    now = copy.deepcopy(SAVED)
    now.pop("thresholds")
    for key, value in changes.items():
        group, _, name = key.partition("__")
        if name:
            now[group][name] = value
        else:
            now[group] = value
    return now


def test_the_same_settings_and_safe_changes_are_no_change():
    assert record_changes(SAVED, _now()) == []
    # more epochs, a moved data list with the same content, 1 == 1.0
    assert record_changes(SAVED, _now(recipe__max_epochs=9, datalist="/moved/list.json", dataset_dir="/moved",
                                      nvum__reg_weight=1)) == []


def test_every_experiment_setting_that_changed_is_listed_with_both_values():
    now = _now(nvum__loss="bce", recipe__learning_rate=0.5, recipe__batch_size=32, image_size=64,
               recipe__lr_milestones=[3, 5], recipe__training_items="def456", recipe__max_epochs=5,
               network={"_target_": "DenseNet121", "out_channels": 3})
    found = {key: (old, new) for key, old, new in record_changes(SAVED, now)}
    assert found == {
        "nvum.loss": ("nvum", "bce"), "recipe.learning_rate": (0.001, 0.5), "recipe.batch_size": (64, 32),
        "image_size": (32, 64), "recipe.lr_milestones": ([4, 5], [3, 5]), "recipe.training_items": ("abc123", "def456"),
        "recipe.max_epochs": (6, 5), "network.out_channels": (2, 3),
    }


def test_accepting_changes_by_name_or_all_and_the_message_names_each_and_the_override():
    changes = record_changes(SAVED, _now(nvum__loss="bce", recipe__learning_rate=0.5))
    ok, refused = accepted(changes, "learning_rate")
    assert [c[0] for c in ok] == ["recipe.learning_rate"] and [c[0] for c in refused] == ["nvum.loss"]
    assert accepted(changes, ["nvum.loss", "learning_rate"]) == (changes, [])
    assert accepted(changes, "all") == (changes, []) and accepted(changes, True) == (changes, [])
    for nothing in (None, "", "false", False, []):
        assert accepted(changes, nothing) == ([], changes)
    message = changes_message("ckpt/checkpoint_epoch=2.pt", changes)
    assert "resuming ckpt/checkpoint_epoch=2.pt with settings that differ" in message
    assert "  nvum.loss: 'nvum' in the checkpoint, 'bce' now" in message
    assert "  recipe.learning_rate: 0.001 in the checkpoint, 0.5 now" in message
    assert '--resume_changes "learning_rate,loss"' in message or '--resume_changes "loss,learning_rate"' in message
