"""The test videos of the `watch` tests and the gallery they are identified against.

Built in the tests from ../shared raw photos (benchmarks/synthetic_video.py), 320x240 at 10 fps, a few
seconds each, written as MJPG AVI: well under a second to build. Ground truth is known by construction.
"""

from __future__ import annotations

from benchmarks.synthetic_video import Person, Scene

ENROLLED = {  # name -> photos enrolled; the videos use another photo of each
    "Jimmy_Carter": (2, 3),
    "Kevin_Costner": (1, 3),
    "Benjamin_Netanyahu": (1, 2),
}
STRANGER = "Jose_Manuel_Durao_Barroso"  # never enrolled


def main_scene() -> Scene:
    """Two people at once, moving and scaling, one blurred for a while, then a dark stretch; then a cut
    that keeps the background: an enrolled person takes the first one's place, a stranger the second's."""
    return Scene(
        people=[
            Person("Jimmy_Carter", 5, range(0, 40), lambda f: (10 + 1.5 * f, 50 - 0.5 * f, 100 + f)),
            Person(
                "Kevin_Costner", 5, range(0, 40), lambda f: (200 - f, 70 - 0.5 * f, 105), blur=range(12, 18)
            ),
            Person(
                "Benjamin_Netanyahu", 4, range(40, 70), lambda f: (70 - 0.8 * (f - 40), 30, 140 - (f - 40))
            ),
            Person(STRANGER, 1, range(40, 70), lambda f: (190 + 0.5 * (f - 40), 80, 110)),
        ],
        frames=70,
        dark=range(24, 31),
    )
