"""How the data-list checks word their errors: a first line that stands alone, then every case listed."""

from __future__ import annotations

#: most problems (rows, images) listed in one error message.
MAX_LISTED = 50


def listing(first: str, lines: list[str], limit: int | None = MAX_LISTED) -> str:
    """An error message: ``first`` (a self-contained line), then ``lines`` indented, at most ``limit``."""
    shown = lines if limit is None else lines[:limit]
    more = [f"... and {len(lines) - len(shown)} more"] if len(shown) < len(lines) else []
    return "\n  ".join([first, *shown, *more])


#: how :func:`bad_images_message` says what degenerate images are, refused or not.
DEGENERATE_REFUSED = ("degenerate (far smaller than the network input, or constant) and refused "
                      "(on_degenerate_image='refuse')")
DEGENERATE_WARNED = ("degenerate (far smaller than the network input, or constant); used all the same "
                     "(on_degenerate_image='refuse' refuses them)")


def degenerate_refused(why: str) -> str:
    """Why inference and the served model leave a degenerate image out under ``degenerate_images='refuse'``."""
    return f"degenerate image, not scored (degenerate_images='refuse'): {why}"


def degenerate_warned(why: str) -> str:
    """The warning of a degenerate image that inference and the served model score all the same."""
    return f"degenerate image, scored all the same: {why}"


def bad_images_message(path, dataset_dir, bad, total: int, what: str = "missing or unreadable",
                       limit: int | None = MAX_LISTED) -> str:
    """The error of :meth:`DataList.verify_images`: the count and the first bad image on the first line, then every one.

    Args:
        bad: ``(split, row, path, reason)`` tuples.
        total: the number of images of the list (to say so when none is found: a wrong ``dataset_dir``).
    """
    split, row, image, why = bad[0]
    verb = "is" if len(bad) == 1 else "are"
    first = f"{len(bad)} image(s) of data list {path} {verb} {what}; the first: {image} (split '{split}', row {row})"
    first += f": {why}"
    if len(bad) == total and all(w == "file not found" for *_, w in bad):
        first += f" (none of the {total} images is in dataset_dir {dataset_dir}: is it the right folder?)"
    return listing(first, [f"{image} (split '{split}', row {row}): {why}" for split, row, image, why in bad], limit)
