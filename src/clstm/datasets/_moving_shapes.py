"""A generated nowcasting task: shapes moving with constant velocity, bouncing at the edges."""

import numbers

import numpy as np

__all__ = ["make_moving_shapes"]


def make_moving_shapes(n_samples, n_steps=8, size=16, n_shapes=2, shape_size=3, max_speed=1,
                       return_frames=False, random_state=None):
    """Sequences of frames of moving squares and discs, and the frame that follows.

    Each sample shows ``n_shapes`` shapes (a square or a disc, chosen at
    random, each ``shape_size`` pixels across, intensity 1 on a 0 background,
    overlaps taking the maximum) on a ``size`` x ``size`` grid. Every shape
    starts at a random position with a random integer velocity in
    ``[-max_speed, max_speed]`` per axis (never 0 on both) and moves by its
    velocity each step; a shape that would leave the grid reverses that
    velocity component first (it bounces). The next frame is thus determined
    by the last two (positions and velocities), which a model must infer from
    the frames: the moving-MNIST style task of Srivastava et al. (2015) and
    Shi et al. (2015), small enough to train in seconds.

    Parameters
    ----------
    n_samples : int
    n_steps : int, default=8
        Input frames per sample.
    size : int, default=16
        Grid height and width.
    n_shapes : int, default=2
    shape_size : int, default=3
        Side of a square, diameter of a disc (at most ``size``; with 3, a
        disc is a plus sign, with 1 or 2 a square).
    max_speed : int, default=1
        Largest speed per axis, in pixels per step (less than
        ``size - shape_size`` when that is positive).
    return_frames : bool, default=False
        Return the whole ``(n_samples, n_steps + 1, size, size, 1)`` movie
        instead of ``(X, y)``.
    random_state : int, numpy Generator/RandomState or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, n_steps, size, size, 1), float64
        The input frames, values in {0, 1}.
    y : ndarray of shape (n_samples, size, size, 1), float64
        The frame after the last one of ``X``.

    Examples
    --------
    >>> from clstm.datasets import make_moving_shapes
    >>> X, y = make_moving_shapes(10, n_steps=5, size=12, random_state=0)
    >>> X.shape, y.shape
    ((10, 5, 12, 12, 1), (10, 12, 12, 1))
    >>> float(X.max()), float(X.min())
    (1.0, 0.0)
    """
    for name, value, low in (("n_samples", n_samples, 1), ("n_steps", n_steps, 1),
                             ("size", size, 1), ("n_shapes", n_shapes, 1),
                             ("shape_size", shape_size, 1), ("max_speed", max_speed, 1)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if shape_size > size:
        raise ValueError(f"shape_size ({shape_size}) must be at most size ({size})")
    room = size - shape_size          # positions (top-left corner) lie in [0, room]
    if room and max_speed > room:
        raise ValueError(f"max_speed ({max_speed}) must be at most size - shape_size ({room})")
    if isinstance(random_state, np.random.Generator):
        rng = random_state
    elif isinstance(random_state, np.random.RandomState):
        rng = np.random.default_rng(random_state.randint(2 ** 31))
    else:
        rng = np.random.default_rng(random_state)
    n_frames = n_steps + 1
    pos = rng.integers(0, room + 1, size=(n_samples, n_shapes, 2))
    vel = np.zeros((n_samples, n_shapes, 2), dtype=np.int64)
    if room:
        speeds = np.arange(-max_speed, max_speed + 1)
        while True:                       # redraw the shapes that would stand still
            still = np.all(vel == 0, axis=-1)
            if not still.any():
                break
            vel[still] = rng.choice(speeds, size=(int(still.sum()), 2))
    is_disc = rng.random((n_samples, n_shapes)) < 0.5
    square = np.ones((shape_size, shape_size))
    centre = (shape_size - 1) / 2.0
    r = np.arange(shape_size) - centre
    # pixel centres within the inscribed circle (a 3-pixel disc is a plus sign)
    disc = (r[:, None] ** 2 + r[None, :] ** 2 < (shape_size / 2.0) ** 2 - 0.25).astype(
        np.float64)
    frames = np.zeros((n_samples, n_frames, size, size))
    for t in range(n_frames):
        for i in range(n_samples):
            for k in range(n_shapes):
                y0, x0 = pos[i, k]
                patch = disc if is_disc[i, k] else square
                window = frames[i, t, y0:y0 + shape_size, x0:x0 + shape_size]
                np.maximum(window, patch, out=window)
        # bounce: reverse a component that would leave the grid, then move
        nxt = pos + vel
        out = (nxt < 0) | (nxt > room)
        vel[out] = -vel[out]
        pos = pos + vel
    frames = frames[..., None]
    if return_frames:
        return frames
    return frames[:, :-1].copy(), frames[:, -1].copy()
