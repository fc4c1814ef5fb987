"""What a kubelet says about an image it cannot pull, in its own words.

The kubelet's image manager and container start report a failed pull in three
places, and readers (``kubectl describe``, the orchestrator's diagnostics, a person
reading a CI log) match on those words, so the stand-ins use the same:

- the container's ``state.waiting``: reason ``ErrImagePull`` with the runtime's error
  as the message, then, while the kubelet backs off before the next try, reason
  ``ImagePullBackOff`` with ``Back-off pulling image "IMAGE"``;
- the image manager's events on the container: ``Normal Pulling`` ``Pulling image
  "IMAGE"``, ``Warning Failed`` ``Failed to pull image "IMAGE": ERROR``, and during the
  back-off ``Normal BackOff`` ``Back-off pulling image "IMAGE"`` (a back-off is not a
  warning to the kubelet: its event type is Normal);
- the container start's event, ``Warning Failed`` ``Error: REASON``, once per attempt.

IMAGE is the image as the pod spec names it; the runtime's error names the reference
it resolved (registry and tag filled in).
"""

from __future__ import annotations

ERR_IMAGE_PULL = "ErrImagePull"
IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
PULL_REASONS = (ERR_IMAGE_PULL, IMAGE_PULL_BACK_OFF)


def image_reference(image: str) -> str:
    """The reference a container runtime resolves ``image`` to: a registry first
    (``docker.io`` when the first part names no host, with ``library/`` for a name of
    one part), and ``:latest`` when it has neither tag nor digest."""
    name, at, digest = image.partition("@")
    first, slash, _ = name.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        name = f"docker.io/{name if slash else 'library/' + name}"
    if not at and ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name + at + digest


def pull_error(image: str) -> str:
    """The error containerd gives the kubelet for an image whose tag does not exist."""
    ref = image_reference(image)
    return (
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": '
        f'failed to resolve reference "{ref}": {ref}: not found'
    )


def rate_limited_error(image: str) -> str:
    """The error containerd gives the kubelet when Docker Hub's pull rate limit is hit:
    an answer a later try gets past, unlike :func:`pull_error`'s."""
    ref = image_reference(image)
    repo, _, tag = ref.removeprefix("docker.io/").rpartition(":")
    return (
        f'rpc error: code = Unknown desc = failed to pull and unpack image "{ref}": '
        f"failed to copy: httpReadSeeker: failed open: unexpected status code "
        f"https://registry-1.docker.io/v2/{repo}/manifests/{tag}: 429 Too Many Requests - "
        "Server message: toomanyrequests: You have reached your unauthenticated pull rate "
        "limit. https://www.docker.com/increase-rate-limit"
    )


def back_off_message(image: str) -> str:
    return f'Back-off pulling image "{image}"'


def waiting_message(reason: str, image: str) -> str:
    """A container's ``state.waiting.message`` for a pull ``reason``."""
    return pull_error(image) if reason == ERR_IMAGE_PULL else back_off_message(image)


def pull_events(reason: str, image: str) -> list[tuple[str, str, str]]:
    """``(type, reason, message)`` of the events a kubelet writes as a container enters
    the pull ``reason``, in order."""
    if reason == ERR_IMAGE_PULL:
        return [
            ("Warning", "Failed", f'Failed to pull image "{image}": {pull_error(image)}'),
            ("Warning", "Failed", f"Error: {ERR_IMAGE_PULL}"),
        ]
    return [
        ("Normal", "BackOff", back_off_message(image)),
        ("Warning", "Failed", f"Error: {IMAGE_PULL_BACK_OFF}"),
    ]
