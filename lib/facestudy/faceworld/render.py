"""Batched, vectorised renderer of the synthetic face world (chapter 00a, "The synthetic face world").

A head is a union of ellipsoids in a head frame (x to the image's right, y up, z towards the camera):
cranium, face, chin, nose and nostril wings, ears, neck, plus hair shells, glasses, hat and the torso.
Eyes, brows, lips, beard, wrinkles and the mask are painted on the skin in head coordinates, so they move
with the geometry. Rendering is orthographic: every pixel's ray is intersected analytically with every
ellipsoid (only inside the ellipsoid's screen bounding box, for the whole batch at once), the nearest hit
wins (a z-buffer: rotations occlude and reveal correctly), then deferred shading (Lambertian + ambient +
Blinn-Phong highlight) and image-level changes (resolution, blur, hue, contrast, brightness) in torch.

The 5 landmarks (left eye, right eye, nose tip, left and right mouth corner; "left" = image left) are
3D points on the surface, projected exactly; a landmark is visible when the ray through it hits nothing
nearer (and, for nose / mouth, when no mask covers it).

``aligned=True`` places the camera so that the frontal, neutral landmarks of each identity match the
ArcFace 112 template (scaled to ``size``); pose then moves the landmarks in that frame.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.align import ARCFACE_TEMPLATE_112  # noqa: F401  (the one ArcFace 5-point template, 112x112 pixels)
from ..errors import ParameterError
from .attributes import Attributes, stack
from .identity import PARAM_NAMES, Identities

SKIN, HAIR, CLOTH, FRAME, LENS, HAT = range(6)
_DT = torch.float32


# ------------------------------------------------------------------------------------------------ utils
def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def _lerp(a, b, w):
    return a + (b - a) * w


def _smooth(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    u = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return u * u * (3 - 2 * u)


def _rot(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(N,3,3) head -> camera rotation: yaw about y (+ -> face to image right), then pitch (+ up), roll."""
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cr, sr = torch.cos(roll), torch.sin(roll)
    o, z = torch.ones_like(yaw), torch.zeros_like(yaw)
    ry = torch.stack([torch.stack([cy, z, sy], -1), torch.stack([z, o, z], -1),
                      torch.stack([-sy, z, cy], -1)], -2)
    # pitch up: forward (0,0,1) -> (0, sin p, cos p)
    rx = torch.stack([torch.stack([o, z, z], -1), torch.stack([z, cp, sp], -1),
                      torch.stack([z, -sp, cp], -1)], -2)
    rz = torch.stack([torch.stack([cr, -sr, z], -1), torch.stack([sr, cr, z], -1),
                      torch.stack([z, z, o], -1)], -2)
    return rz @ rx @ ry


def _palette(stops: Sequence[tuple[float, tuple[float, float, float]]], x: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear colour ramp: (N,) in [0,1] -> (N,3)."""
    xs = torch.tensor([s[0] for s in stops], dtype=_DT)
    cs = torch.tensor([s[1] for s in stops], dtype=_DT)
    x = x.clamp(0, 1)
    i = torch.clamp(torch.searchsorted(xs, x.contiguous(), right=True) - 1, 0, len(stops) - 2)
    w = ((x - xs[i]) / (xs[i + 1] - xs[i])).unsqueeze(-1)
    return cs[i] * (1 - w) + cs[i + 1] * w


HAIR_STOPS = [(0.0, (0.045, 0.035, 0.03)), (0.2, (0.10, 0.065, 0.045)), (0.35, (0.26, 0.15, 0.08)),
              (0.55, (0.52, 0.24, 0.10)), (0.7, (0.70, 0.50, 0.27)), (0.82, (0.86, 0.70, 0.43)),
              (1.0, (0.93, 0.90, 0.84))]
IRIS_STOPS = [(0.0, (0.20, 0.11, 0.06)), (0.3, (0.38, 0.24, 0.10)), (0.5, (0.36, 0.40, 0.20)),
              (0.7, (0.25, 0.42, 0.62)), (1.0, (0.50, 0.56, 0.60))]
SKIN_STOPS = [(0.0, (0.30, 0.18, 0.12)), (0.3, (0.55, 0.36, 0.25)), (0.6, (0.80, 0.60, 0.48)),
              (1.0, (0.97, 0.82, 0.72))]


def _noise_texture() -> torch.Tensor:
    """A fixed (1,1,64,64) smooth random texture (the world's only 'asset', drawn from seed 1234)."""
    g = torch.Generator().manual_seed(1234)
    t = torch.rand(1, 1, 64, 64, generator=g, dtype=_DT)
    k = torch.tensor([1.0, 2.0, 1.0], dtype=_DT) / 4
    t = F.pad(t, (1, 1, 1, 1), mode="circular")
    t = F.conv2d(t, k.view(1, 1, 1, 3))
    t = F.conv2d(t, k.view(1, 1, 3, 1))
    t = (t - t.mean()) / t.std()
    return t


_NOISE = _noise_texture()


def _noise(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Periodic smooth noise (zero mean, ~unit std) at texture coordinates (u, v) (period 1), any (N,...)."""
    shape = u.shape
    n = shape[0]
    gu = (torch.remainder(u, 1.0) * 2 - 1).reshape(n, -1, 1)
    gv = (torch.remainder(v, 1.0) * 2 - 1).reshape(n, -1, 1)
    grid = torch.cat([gu, gv], -1).unsqueeze(1)
    out = F.grid_sample(_NOISE.expand(n, 1, 64, 64), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.reshape(shape)


# -------------------------------------------------------------------------------------------- geometry
class _Prim:
    __slots__ = ("name", "cls", "frame", "c", "r", "rot", "active", "mask", "needs_q")

    def __init__(self, name, cls, c, r, active=None, rot=None, frame="head", mask=None, needs_q=False):
        self.name, self.cls, self.frame = name, cls, frame
        self.c, self.r, self.rot, self.active, self.mask = c, r, rot, active, mask
        self.needs_q = needs_q


def _vec(*xs) -> torch.Tensor:
    n = max(x.shape[0] for x in xs if torch.is_tensor(x))  # (N,) or (N,1,1)
    return torch.stack([x.reshape(n) if torch.is_tensor(x) else torch.full((n,), float(x), dtype=_DT) for x in xs], -1)


def _zfront(c: torch.Tensor, r: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Front z of axis-aligned ellipsoids (N,3)/(N,3) at head (x, y) (N,...); -inf where missed."""
    sh = (-1,) + (1,) * (x.dim() - 1)
    u = (x - c[:, 0].view(sh)) / r[:, 0].view(sh)
    v = (y - c[:, 1].view(sh)) / r[:, 1].view(sh)
    w = 1 - u * u - v * v
    z = c[:, 2].view(sh) + r[:, 2].view(sh) * torch.sqrt(w.clamp_min(0))
    return torch.where(w > 0, z, torch.full_like(z, -math.inf))


class _World:
    """Per-image geometry and appearance of a batch (all tensors have a leading N)."""

    def __init__(self, ident: np.ndarray, cols: dict[str, np.ndarray]):
        p = {k: _t(ident[:, i]) for i, k in enumerate(PARAM_NAMES)}
        a = {k: _t(v.astype(np.float64)) for k, v in cols.items()}
        self.p, self.a = p, a
        n = ident.shape[0]
        self.n = n
        zero = torch.zeros(n, dtype=_DT)
        smile, mopen, age = a["smile"], a["mouth_open"], a["age"]

        # ---- skin geometry (all axis-aligned in the head frame)
        ey = p["eye_y"]
        self.eye_y = ey
        cran_c = _vec(zero, ey + 0.18, zero - 0.26)
        cran_r = _vec(p["head_w"], p["head_h"], p["head_d"])
        face_c = _vec(zero, ey - 0.36, zero + 0.12)
        face_r = _vec(p["face_w"] * (0.97 + 0.06 * p["cheek"]), p["face_h"], p["face_d"])  # full cheeks: wider
        y_m = ey - p["mouth_dy"]
        self.y_m = y_m
        chin_c = _vec(zero, y_m - 0.20 - p["chin_len"] - 0.04 * mopen, zero)
        chin_r = _vec(p["jaw_w"], 0.22 + 0.3 * p["chin_len"].clamp_min(0), 0.36 + zero)
        chin_c[:, 2] = _zfront(face_c, face_r, zero, chin_c[:, 1]).clamp_min(0.2) - chin_r[:, 2] + 0.02
        y_n = ey - p["nose_len"]
        self.y_n = y_n
        nose_r = _vec(p["nose_w"], p["nose_len"] * 0.62 + 0.04, zero + 0.1)
        nose_cy = y_n + 0.03 + 0.25 * nose_r[:, 1]
        zf_tip = _zfront(face_c, face_r, zero, y_n)
        zc = _zfront(face_c, face_r, zero, nose_cy) - 0.06
        k = torch.sqrt(1 - ((y_n - nose_cy) / nose_r[:, 1]) ** 2)
        nose_r[:, 2] = (zf_tip + p["nose_d"] - zc) / k
        nose_c = _vec(zero, nose_cy, zc)
        alar_r = _vec(0.03 + 0.25 * p["nose_w"], 0.04 + zero, 0.06 + zero)
        alars = []
        for s in (-1.0, 1.0):
            ac = _vec(s * p["nose_w"] * 0.9, y_n + 0.02, zero)
            ac[:, 2] = _zfront(face_c, face_r, ac[:, 0], ac[:, 1]) + 0.01 + 0.25 * p["nose_d"] - alar_r[:, 2]
            alars.append(ac)
        ear_r = _vec(0.06 + zero, 0.17 * p["ear_size"], 0.11 * p["ear_size"])
        ears = [_vec(s * (p["head_w"] * 0.97), ey - 0.12, zero - 0.22) for s in (-1.0, 1.0)]
        neck_c = _vec(zero, ey - 1.25, zero - 0.22)
        neck_r = _vec(0.40 + 0.1 * p["jaw_w"], 0.75 + zero, 0.42 + zero)

        skin = [("cranium", cran_c, cran_r), ("face", face_c, face_r), ("chin", chin_c, chin_r),
                ("nose", nose_c, nose_r), ("alar_l", alars[0], alar_r), ("alar_r", alars[1], alar_r)]
        self.skin_front = [(c, r) for _, c, r in skin]
        prims = [_Prim(nm, SKIN, c, r) for nm, c, r in skin]
        prims += [_Prim("ear_l", SKIN, ears[0], ear_r), _Prim("ear_r", SKIN, ears[1], ear_r),
                  _Prim("neck", SKIN, neck_c, neck_r)]

        # ---- hair
        style = torch.floor(p["hair_style"])
        self.style = style
        vol = torch.where(style == 0, 0.012 + 0 * p["hair_vol"], p["hair_vol"])
        hair_r = cran_r * (1 + vol).unsqueeze(-1)
        hl_front = ey + p["hairline"] + 0.08 * age - torch.where(style == 4, 0.25 + zero, zero)
        hl_side = torch.where(style >= 2, ey - 0.25, ey + 0.02)
        hl_back = torch.where(style >= 3, ey - 1.0, torch.where(style == 2, ey - 0.55, ey - 0.35))
        self.hairline = hl_front
        hair_on = torch.ones(n, dtype=torch.bool)

        def hair_mask(P, q, style=style, hl_front=hl_front, hl_side=hl_side, hl_back=hl_back, ey=ey):
            x, y, z = P
            sh = (-1,) + (1,) * (x.dim() - 1)
            phi = torch.atan2(x.abs(), z + 0.26)
            w1 = _smooth(0.55, 1.15, phi)
            w2 = _smooth(1.7, 2.5, phi)
            hl = hl_front.view(sh) * (1 - w1) + hl_side.view(sh) * w1
            hl = hl * (1 - w2) + hl_back.view(sh) * w2
            # a softly wavy hairline
            hl = hl + 0.025 * torch.sin(x * 23.0)
            ok = y > hl
            return ok

        prims.append(_Prim("hair", HAIR, cran_c, hair_r, hair_on, mask=hair_mask))
        long_on = style == 3
        long_c = _vec(zero, ey - 0.55, zero - 0.45)
        long_r = _vec(p["head_w"] + 0.12, 1.05 + zero, p["head_d"] * 0.5)

        prims.append(_Prim("hair_long", HAIR, long_c, long_r, long_on))  # a curtain behind the face and neck

        # ---- glasses (geometric: on when the attribute >= 0.5)
        sun_on = a["sunglasses"] >= 0.5
        eg_on = (a["eyeglasses"] >= 0.5) | sun_on
        zl = torch.maximum(_zfront(face_c, face_r, p["eye_sp"], ey), _zfront(cran_c, cran_r, p["eye_sp"], ey))
        zl = zl + 0.11
        lens_r = _vec(0.16 + zero, 0.12 + zero, 0.015 + zero)

        def lens_mask(P, q, sun_on=sun_on):
            sh = (-1,) + (1,) * (q[0].dim() - 1)
            ring = q[0] * q[0] + q[1] * q[1] > 0.74
            return ring | sun_on.view(sh)

        for s, nm in ((-1.0, "lens_l"), (1.0, "lens_r")):
            prims.append(_Prim(nm, LENS, _vec(s * p["eye_sp"], ey + 0.01, zl), lens_r, eg_on, mask=lens_mask,
                               needs_q=True))
        prims.append(_Prim("bridge", FRAME, _vec(zero, ey + 0.06, zl + 0.01),
                           _vec(p["eye_sp"] - 0.12, 0.016 + zero, 0.016 + zero), eg_on))
        for s, nm in ((-1.0, "temple_l"), (1.0, "temple_r")):
            p0 = torch.stack([s * (p["eye_sp"] + 0.15), ey + 0.05, zl - 0.01], -1)
            p1 = torch.stack([s * (p["head_w"] * 1.03), ey + 0.05, zero - 0.2], -1)
            mid = (p0 + p1) / 2
            d = p1 - p0
            length = d.norm(dim=-1)
            ang = torch.atan2(d[:, 0], d[:, 2])
            rot = _rot(ang, zero, zero)
            prims.append(_Prim(nm, FRAME, mid, _vec(0.014 + zero, 0.014 + zero, length / 2), eg_on, rot=rot))

        # ---- hat (cap)
        hat_on = a["hat"] >= 0.5
        hat_r = cran_r * (1 + vol + 0.05).unsqueeze(-1)

        def hat_mask(P, q, ey=ey):
            sh = (-1,) + (1,) * (P[0].dim() - 1)
            return P[1] > ey.view(sh) + 0.52 - 0.25 * (P[2] < -0.1).to(_DT)

        prims.append(_Prim("hat", HAT, cran_c, hat_r, hat_on, mask=hat_mask))
        brim_c = _vec(zero, ey + 0.55, zero + 0.35)
        brim_r = _vec(0.62 + zero, 0.025 + zero, 0.62 + zero)

        def brim_mask(P, q):
            return P[2] > 0.2

        prims.append(_Prim("brim", HAT, brim_c, brim_r, hat_on, mask=brim_mask))

        # ---- torso (body frame: does not turn with the head)
        prims.append(_Prim("torso", CLOTH, _vec(zero, ey - 2.25, zero - 0.35), _vec(1.55 + zero, 0.85 + zero,
                                                                                      0.75 + zero), frame="body"))
        self.prims = prims
        self.index = {pr.name: k for k, pr in enumerate(prims)}

        # ---- landmarks (head frame, exact points of the surface)
        self.mouth_hw = p["mouth_w"] * (1 + 0.12 * smile)
        self.smile_lift = 0.07 * smile
        lx = torch.stack([-p["eye_sp"], p["eye_sp"], zero, -self.mouth_hw, self.mouth_hw], -1)
        ly = torch.stack([ey, ey, y_n, y_m + self.smile_lift, y_m + self.smile_lift], -1)
        lz = self.surface_z(lx, ly)
        self.landmarks3d = torch.stack([lx, ly, lz], -1)  # (N,5,3)

    def surface_z(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = torch.full_like(x, -math.inf)
        for c, r in self.skin_front:
            z = torch.maximum(z, _zfront(c, r, x, y))
        return z


# ------------------------------------------------------------------------------------------ raycasting
def _prepare(prim: _Prim, R_head: torch.Tensor):
    """Camera-frame centre (N,3), local->camera rotation (N,3,3), radii (N,3)."""
    if prim.frame == "head":
        Rc = R_head if prim.rot is None else R_head @ prim.rot
        C = (R_head @ prim.c.unsqueeze(-1)).squeeze(-1)
    else:
        Rc = torch.eye(3, dtype=_DT).expand(prim.c.shape[0], 3, 3) if prim.rot is None else prim.rot
        C = prim.c
    return C, Rc, prim.r


def _quadric(C, Rc, r):
    """Coefficients of the ray-ellipsoid quadratic as polynomials in the pixel's camera (x, y).

    With q(x, y, t) the hit point in unit-sphere coordinates, |q|^2 = 1 gives a t^2 + 2 b t + c = 0 where
    b is linear and c quadratic in (x, y); c is pre-multiplied by a. Computed in float64 (thin ellipsoids).
    """
    A = Rc.double().transpose(1, 2)
    inv_r = 1.0 / r.double()
    al, be, d = A[:, :, 0] * inv_r, A[:, :, 1] * inv_r, A[:, :, 2] * inv_r
    ga = -(A @ C.double().unsqueeze(-1)).squeeze(-1) * inv_r
    a = (d * d).sum(-1)
    out = [a, (d * al).sum(-1), (d * be).sum(-1), (d * ga).sum(-1),
           (al * al).sum(-1) * a, 2 * (al * be).sum(-1) * a, (be * be).sum(-1) * a,
           2 * (al * ga).sum(-1) * a, 2 * (be * ga).sum(-1) * a, ((ga * ga).sum(-1) - 1) * a]
    return [o.to(_DT).view(-1, 1, 1) for o in out]


def _hit(x: torch.Tensor, y: torch.Tensor, quad) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-hit camera depth t and hit mask for rays at x (N,1,w) / y (N,h,1) (or equal shapes)."""
    a, bx, by, b0, axx, axy, ayy, ax, ay, a0 = quad
    b = (bx * x + b0) + by * y
    c = ((axx * x + ax) * x + a0) + ((ayy * y + ay) * y) + (axy * x) * y
    disc = b * b - c
    t = (torch.sqrt(disc.clamp_min(0)) - b) / a
    return t, disc > 0


def _bbox(C, Rc, r, s, ox, oy, active, H, W):
    """Union over the batch of the ellipsoids' pixel bounding boxes: (v0, v1, u0, u1) or None."""
    M = Rc * r.unsqueeze(1)
    ex = M[:, 0, :].norm(dim=-1)
    ey = M[:, 1, :].norm(dim=-1)
    u_lo = ox + s * (C[:, 0] - ex)
    u_hi = ox + s * (C[:, 0] + ex)
    v_lo = oy - s * (C[:, 1] + ey)
    v_hi = oy - s * (C[:, 1] - ey)
    if active is not None:
        if not bool(active.any()):
            return None
        u_lo, u_hi, v_lo, v_hi = u_lo[active], u_hi[active], v_lo[active], v_hi[active]
    u0 = max(0, int(math.floor(float(u_lo.min()))))
    u1 = min(W, int(math.ceil(float(u_hi.max()))) + 1)
    v0 = max(0, int(math.floor(float(v_lo.min()))))
    v1 = min(H, int(math.ceil(float(v_hi.max()))) + 1)
    if u1 <= u0 or v1 <= v0:
        return None
    return v0, v1, u0, u1


def _head_point(R_head, x, y, t):
    """Camera point -> head frame, each of the 3 coordinates as a tensor shaped like t."""
    sh = (-1,) + (1,) * (t.dim() - 1)
    return [(R_head[:, 0, i].view(sh) * x + R_head[:, 1, i].view(sh) * y) + R_head[:, 2, i].view(sh) * t
            for i in range(3)]


def _raycast(world: _World, R_head, xs, ys, H, W, s, ox, oy, full_grid: bool):
    """Nearest hit per ray: depth (N,H,W) (-inf = background) and primitive index (N,H,W) int64 (-1).

    ``full_grid``: xs is (N,1,W) and ys (N,H,1) (an image; each primitive only inside its bounding box);
    else xs, ys are (N,1,P) points.
    """
    n = world.n
    D = torch.full((n, H, W), -math.inf, dtype=_DT)
    I = torch.full((n, H, W), -1, dtype=torch.int64)
    for k, prim in enumerate(world.prims):
        C, Rc, r = _prepare(prim, R_head)
        if full_grid:
            bb = _bbox(C, Rc, r, s, ox, oy, prim.active, H, W)
            if bb is None:
                continue
            v0, v1, u0, u1 = bb
            x, y = xs[:, :, u0:u1], ys[:, v0:v1, :]
        else:
            if prim.active is not None and not bool(prim.active.any()):
                continue
            v0, v1, u0, u1 = 0, H, 0, W
            x, y = xs, ys
        t, hit = _hit(x, y, _quadric(C, Rc, r))
        if prim.active is not None:
            hit = hit & prim.active.view(-1, 1, 1)
        Dsub = D[:, v0:v1, u0:u1]
        better = hit & (t > Dsub)
        if prim.mask is not None:
            P = _head_point(R_head, x, y, t) if prim.frame == "head" else [x + 0 * t, y + 0 * t, t]
            q = None
            if prim.needs_q:
                Ai = Rc.transpose(1, 2)
                Pc = [x - C[:, 0].view(-1, 1, 1), y - C[:, 1].view(-1, 1, 1), t - C[:, 2].view(-1, 1, 1)]
                q = [(Ai[:, i, 0].view(-1, 1, 1) * Pc[0] + Ai[:, i, 1].view(-1, 1, 1) * Pc[1]
                      + Ai[:, i, 2].view(-1, 1, 1) * Pc[2]) / r[:, i].view(-1, 1, 1) for i in range(2)]
            better = better & prim.mask(P, q)
        D[:, v0:v1, u0:u1] = torch.where(better, t, Dsub)
        I[:, v0:v1, u0:u1].masked_fill_(better, k)
    return D, I


def _normals(world: _World, R_head, D, I, xs, ys):
    """Deferred camera-frame unit normals of the winning ellipsoid at each pixel (3 x (N,H,W))."""
    n, H, W = D.shape
    K = len(world.prims)
    Ct = torch.zeros(n, K + 1, 3, dtype=_DT)
    Mt = torch.zeros(n, K + 1, 6, dtype=_DT)
    for k, prim in enumerate(world.prims):
        C, Rc, r = _prepare(prim, R_head)
        M = Rc @ torch.diag_embed(1.0 / (r * r)) @ Rc.transpose(1, 2)
        Ct[:, k + 1] = C
        Mt[:, k + 1] = torch.stack([M[:, 0, 0], M[:, 0, 1], M[:, 0, 2], M[:, 1, 1], M[:, 1, 2], M[:, 2, 2]], -1)
    idx = (I + 1).view(n, -1)
    g = lambda tab, j: torch.gather(tab[:, :, j], 1, idx).view(n, H, W)  # noqa: E731
    dx, dy = xs - g(Ct, 0), ys - g(Ct, 1)
    dz = torch.where(I >= 0, D, torch.zeros_like(D)) - g(Ct, 2)
    m00, m01, m02, m11, m12, m22 = (g(Mt, j) for j in range(6))
    nx = m00 * dx + m01 * dy + m02 * dz
    ny = m01 * dx + m11 * dy + m12 * dz
    nz = m02 * dx + m12 * dy + m22 * dz
    inv = torch.rsqrt(nx * nx + ny * ny + nz * nz + 1e-12)
    return nx * inv, ny * inv, nz * inv


class _Cam:
    """Per-image orthographic camera in (hi-res) pixels, to find screen windows of head-frame boxes."""

    def __init__(self, R_head, s, ox, oy, H, W):
        self.R, self.s, self.ox, self.oy, self.H, self.W = R_head, s, ox, oy, H, W

    def window(self, lo: torch.Tensor, hi: torch.Tensor, on: torch.Tensor | None = None):
        """Union over the batch of the screen boxes of head-frame boxes [lo, hi] (N,3): (sv, su) or None."""
        if on is not None:
            if not bool(on.any()):
                return None
        corners = torch.stack([torch.stack([(hi if i & 1 else lo)[:, 0], (hi if i & 2 else lo)[:, 1],
                                            (hi if i & 4 else lo)[:, 2]], -1) for i in range(8)], 1)
        cam = torch.einsum("nij,nkj->nki", self.R, corners)
        u = self.ox.view(-1, 1) + self.s.view(-1, 1) * cam[..., 0]
        v = self.oy.view(-1, 1) - self.s.view(-1, 1) * cam[..., 1]
        if on is not None:
            u, v = u[on], v[on]
        u0, u1 = max(0, int(math.floor(float(u.min())))), min(self.W, int(math.ceil(float(u.max()))) + 1)
        v0, v1 = max(0, int(math.floor(float(v.min())))), min(self.H, int(math.ceil(float(v.max()))) + 1)
        if u1 <= u0 or v1 <= v0:
            return None
        return slice(v0, v1), slice(u0, u1)


# -------------------------------------------------------------------------------------------- shading
def _per_image_colours(background: np.ndarray) -> dict[str, torch.Tensor]:
    """Nuisance colours drawn from each image's background seed (hat, clothes, mask, frame, backdrop)."""
    n = len(background)
    out = {k: np.zeros((n, 3), np.float32) for k in ("hat", "cloth", "mask", "frame", "bg1", "bg2")}
    extra = np.zeros((n, 4), np.float32)
    hats = np.array([[.12, .15, .35], [.6, .1, .1], [.1, .1, .1], [.85, .85, .8], [.2, .4, .2], [.8, .6, .2]])
    masks = np.array([[.62, .78, .90], [.93, .93, .93], [.12, .12, .14], [.55, .75, .85]])
    frames = np.array([[.07, .07, .08], [.25, .15, .08], [.55, .52, .47], [.1, .1, .3]])
    for i, b in enumerate(background):
        rng = np.random.default_rng([int(b), 99])
        out["hat"][i] = hats[rng.integers(len(hats))] * rng.uniform(0.8, 1.1)
        out["cloth"][i] = rng.uniform(0.05, 0.8, 3)
        out["mask"][i] = masks[rng.integers(len(masks))]
        out["frame"][i] = frames[rng.integers(len(frames))]
        if b == 0:
            out["bg1"][i], out["bg2"][i] = (0.64, 0.64, 0.64), (0.50, 0.50, 0.50)
            extra[i] = (0.0, 0.0, 0.0, 0.0)
        else:
            base = rng.uniform(0.1, 0.9, 3)
            out["bg1"][i] = np.clip(base + rng.normal(0, 0.12, 3), 0, 1)
            out["bg2"][i] = np.clip(base + rng.normal(0, 0.12, 3), 0, 1)
            extra[i] = (rng.uniform(-np.pi, np.pi), rng.uniform(0.0, 0.25), rng.uniform(0.5, 3.0),
                        rng.uniform(0, 1))
    res = {k: torch.from_numpy(v) for k, v in out.items()}
    res["bg_extra"] = torch.from_numpy(extra)
    return res


def _c4(c: torch.Tensor) -> torch.Tensor:
    return c.view(-1, 3, 1, 1)


def _v(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1)


def _box(lo: Sequence, hi: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-frame box corners from per-image tensors or floats."""
    return _vec(*lo), _vec(*hi)


def _skin_albedo(w: _World, P, I: torch.Tensor, cols: dict, cam: _Cam) -> tuple[torch.Tensor, torch.Tensor]:
    """Skin colour with painted features (eyes, brows, lips, beard, wrinkles, mask): (N,3,H,W), spec (N,H,W).

    Features are evaluated only inside the screen window of their head-frame region (for speed).
    """
    p, a = w.p, w.a
    n, H, W = I.shape
    x, y, z = P
    k_nose, k_al, k_ar = w.index["nose"], w.index["alar_l"], w.index["alar_r"]
    k_el, k_er, k_neck = w.index["ear_l"], w.index["ear_r"], w.index["neck"]
    zero = torch.zeros(n, dtype=_DT)
    ey, age, smile = _v(w.eye_y), _v(a["age"]), _v(a["smile"])

    base = _palette(SKIN_STOPS, p["skin_l"])
    warm = (p["skin_warm"] - 0.5)
    base = base + torch.stack([0.05 * warm, -0.01 * warm, -0.04 * warm], -1)
    base = base * torch.stack([1 + 0.04 * p["blush"], 1 - 0.03 * p["blush"], 1 - 0.03 * p["blush"]], -1)  # rosy
    base = _lerp(base, base.mean(-1, keepdim=True), (0.25 * a["age"]).unsqueeze(-1))  # older: less saturated
    col = _c4(base).expand(n, 3, H, W).clone()
    spec = torch.full((n, H, W), 0.10, dtype=_DT)
    mul = torch.where(I == k_neck, 0.82, 1.0)
    mul = torch.where((I == k_el) | (I == k_er), mul * 0.93, mul)

    def cut(win, *ts):
        sv, su = win
        return [t[:, sv, su] for t in ts]

    def front_of(win):
        zz, ii = cut(win, z, I)
        return (zz > -0.05) & (ii != k_el) & (ii != k_er) & (ii != k_neck)

    # hair colour (per image override or the identity's own), greying with age
    hair = hair_rgb(p["hair_col"], a["hair_color"], a["age"])

    # ---- eyes, sockets, brows (mirror-symmetric through |x|)
    win = cam.window(*_box((-p["eye_sp"] - 0.22, w.eye_y - 0.2, zero + 0.05),
                           (p["eye_sp"] + 0.22, w.eye_y + p["brow_h"] + 0.08, zero + 0.95)))
    if win is not None:
        xw, yw, iw = cut(win, x, y, I)
        fr = front_of(win) & (iw != k_nose) & (iw != k_al) & (iw != k_ar)
        xa = xw.abs()
        ex = xa - _v(p["eye_sp"])
        eyy = yw - ey - _v(p["eye_tilt"]) * 0.25 * ex
        mw = torch.exp(-(ex ** 2 / 0.02 + (eyy - 0.02) ** 2 / 0.01)) * fr * _v(0.10 + 0.12 * p["brow_ridge"])
        aw = _v(1.45 * p["eye_r"])
        opn = _v((p["eye_open"] * (1 - a["eyes_closed"]) * (1 - 0.3 * a["smile"])).clamp(0, 1))
        ah = aw * 0.5 * opn
        u = ex / aw
        g = (1 - u * u).clamp_min(0)
        upper = ah * g.pow(0.7)
        lower = -0.55 * ah * g.pow(0.9)
        in_eye = (eyy < upper) & (eyy > lower) & (u.abs() < 1) & fr
        ri = 0.42 * aw
        rr = torch.sqrt(ex ** 2 + (yw - ey) ** 2)
        iris = _palette(IRIS_STOPS, p["iris_hue"])
        ecol = torch.where((rr < ri).unsqueeze(1), _c4(iris) * (0.7 + 0.5 * (rr / ri)).unsqueeze(1),
                           _c4(torch.tensor([0.93, 0.91, 0.88]).expand(n, 3)) * (0.8 + 0.2 * g).unsqueeze(1))
        ecol = torch.where((rr < 0.38 * ri).unsqueeze(1), torch.full_like(ecol, 0.03), ecol)
        lid_shadow = torch.exp(-(upper - eyy).clamp_min(0) / (0.25 * ah + 1e-3))
        ecol = ecol * (1 - 0.35 * lid_shadow).unsqueeze(1)
        cw = col[:, :, win[0], win[1]]
        cw = torch.where(in_eye.unsqueeze(1), ecol, cw)
        sw = spec[:, win[0], win[1]]
        spec[:, win[0], win[1]] = torch.where(in_eye, torch.full_like(sw, 0.6), sw)
        lash = (eyy >= upper) & (eyy < upper + 0.013 + 0.006 * (1 - opn)) & (u.abs() < 1.08) & fr
        mw = mw + 0.25 * ((eyy <= lower) & (eyy > lower - 0.007) & (u.abs() < 1) & fr)
        mw = mw + 0.10 * torch.exp(-((eyy - ah - 0.045) / 0.01) ** 2) * (u.abs() < 0.95) * fr
        mw = mw + 0.15 * torch.exp(-((eyy - lower + 0.045) / 0.018) ** 2) * (u.abs() < 0.9) * fr * age
        # eyebrows
        ub = (xa - _v(p["eye_sp"] + 0.01)) / 0.165
        yb = ey + _v(p["brow_h"]) + _v(p["brow_arch"]) * (1 - ub * ub) - 0.015 * ub
        thick = _v(p["brow_t"]) * (1 - 0.35 * ub)
        dens = (0.8 + 0.25 * _noise(xa * 6, yw * 14)).clamp(0, 1)
        bm = ((ub.abs() < 1) & ((yw - yb).abs() < thick / 2) & fr) * dens
        cw = _lerp(cw, _c4(hair * 0.5 + 0.02), (0.92 * bm).unsqueeze(1))
        cw = torch.where(lash.unsqueeze(1), cw * 0.12 + 0.02, cw)
        col[:, :, win[0], win[1]] = cw
        mul[:, win[0], win[1]] *= (1 - mw).clamp_min(0.3)

    # ---- nose: nostrils, nasolabial folds
    win = cam.window(*_box((-p["nose_w"] - 0.05, w.y_n - 0.1, zero + 0.4),
                           (p["nose_w"] + 0.05, w.y_n + 0.01, zero + 1.25)))
    if win is not None:
        xw, yw, iw = cut(win, x, y, I)
        is_nose = (iw == k_nose) | (iw == k_al) | (iw == k_ar)
        nos = ((xw.abs() - _v(p["nose_w"]) * 0.45) ** 2 / 0.03 ** 2 + (yw - _v(w.y_n) + 0.05) ** 2 / 0.018 ** 2 < 1)
        mul[:, win[0], win[1]] *= 1 - 0.7 * (nos & is_nose)
    win = cam.window(*_box((-w.mouth_hw - 0.1, w.y_m - 0.08, zero + 0.3), (w.mouth_hw + 0.1, w.y_n + 0.05, zero + 1.0)))
    if win is not None:
        xw, yw = cut(win, x, y)
        xa = xw.abs()
        ax_, ay_ = _v(p["nose_w"] + 0.06), _v(w.y_n) + 0.03
        bx_, by_ = _v(w.mouth_hw + 0.05), _v(w.y_m) - 0.04
        dx, dy = bx_ - ax_, by_ - ay_
        tt = (((xa - ax_) * dx + (yw - ay_) * dy) / (dx * dx + dy * dy)).clamp(0, 1)
        dd2 = (xa - ax_ - tt * dx) ** 2 + (yw - ay_ - tt * dy) ** 2
        fold = torch.exp(-dd2 / 0.012 ** 2) * front_of(win) * (0.05 + 0.2 * age + 0.12 * smile)
        mul[:, win[0], win[1]] *= 1 - fold

    # ---- forehead wrinkles (age)
    if bool((a["age"] > 0).any()):
        win = cam.window(*_box((zero - 0.35, w.eye_y + p["brow_h"] + 0.08, zero + 0.2),
                               (zero + 0.35, w.hairline, zero + 1.0)), a["age"] > 0)
        if win is not None:
            xw, yw = cut(win, x, y)
            fw = (yw > ey + _v(p["brow_h"]) + 0.09) & (yw < _v(w.hairline) - 0.06) & (xw.abs() < 0.33)
            mul[:, win[0], win[1]] *= 1 - 0.13 * (fw & front_of(win) & (torch.sin(yw * 75) > 0.8)) * age

    # ---- mouth
    def lips_of(xw, yw, fr, is_nose, S):
        um = xw / S(w.mouth_hw)
        gm = (1 - um * um).clamp_min(0)
        yc = S(w.y_m) + S(w.smile_lift) * um * um - 0.012 * S(a["smile"]) * gm
        oh = S(0.07 * a["mouth_open"] + 0.016 * a["smile"]) * gm.pow(0.7)
        lt = S(p["lip_t"]) * gm.pow(0.5)
        inm = (um.abs() < 1) & fr & ~is_nose
        up_lip = inm & (yw > yc + oh) & (yw < yc + oh + lt)
        lo_lip = inm & (yw < yc - oh) & (yw > yc - oh - 1.3 * lt)
        opening = inm & ((yw - yc).abs() <= oh)
        return inm, yc, oh, lt, up_lip, lo_lip, opening

    win = cam.window(*_box((-w.mouth_hw - 0.03, w.y_m - 0.16, zero + 0.3),
                           (w.mouth_hw + 0.03, w.y_m + 0.16, zero + 1.0)))
    if win is not None:
        xw, yw, iw = cut(win, x, y, I)
        fr = front_of(win)
        is_nose = (iw == k_nose) | (iw == k_al) | (iw == k_ar)
        inm, yc, oh, lt, up_lip, lo_lip, opening = lips_of(xw, yw, fr, is_nose, _v)
        lip_base = _lerp(base * torch.tensor([1.0, 0.70, 0.70]), torch.tensor([0.62, 0.26, 0.28]) * (0.5 + 0.5 * base),
                         (0.3 + 0.5 * p["lip_col"]).unsqueeze(-1))
        lips = up_lip | lo_lip
        cw = col[:, :, win[0], win[1]]
        cw = torch.where(lips.unsqueeze(1), _c4(lip_base) * (1 - 0.15 * up_lip).unsqueeze(1), cw)
        teeth = opening & (yw > yc + oh * 0.1 - 0.02 * (1 - smile))
        cw = torch.where(opening.unsqueeze(1), torch.tensor([0.17, 0.07, 0.07]).view(1, 3, 1, 1).expand_as(cw), cw)
        cw = torch.where(teeth.unsqueeze(1), torch.tensor([0.88, 0.86, 0.80]).view(1, 3, 1, 1).expand_as(cw), cw)
        col[:, :, win[0], win[1]] = cw
        sw = spec[:, win[0], win[1]]
        spec[:, win[0], win[1]] = torch.where(lips, torch.full_like(sw, 0.25), sw)
        mline = inm & ((yw - yc).abs() < 0.006) & (oh < 0.006)
        mul[:, win[0], win[1]] *= 1 - 0.45 * mline

    # ---- beard (continuous density: ~0.3 stubble, 1 full) and moustache, only on images that have them
    bon = (a["beard"] > 0) | (a["moustache"] > 0)
    win = cam.window(*_box((-p["face_w"] - 0.15, w.y_m - 1.0, zero - 0.3), (p["face_w"] + 0.15, w.eye_y, zero + 1.3)),
                     bon)
    if win is not None:
        idx = torch.nonzero(bon).flatten()
        sv, su = win

        def S(t):
            return t[idx].view(-1, 1, 1)

        xw, yw, zw, iw = (t[idx][:, sv, su] for t in (x, y, z, I))
        fr = (zw > -0.05) & (iw != k_el) & (iw != k_er) & (iw != k_neck)
        is_nose = (iw == k_nose) | (iw == k_al) | (iw == k_ar)
        inm, yc, oh, lt, up_lip, lo_lip, opening = lips_of(xw, yw, fr, is_nose, S)
        xa = xw.abs()
        bden = (0.55 + 0.5 * _noise(xw * 11 + 0.1, yw * 11 + 0.4)).clamp(0, 1)
        y_top = S(w.y_m) + 0.03 + 0.6 * (xa / S(p["face_w"])).pow(2.2)
        breg = (yw < torch.minimum(y_top, S(w.eye_y) - 0.08)) & (zw > -0.2) & ~(up_lip | lo_lip) & ~opening
        breg = breg & ~is_nose & (iw != k_el) & (iw != k_er) & ((iw != k_neck) | (yw > S(w.y_m) - 0.62))
        beard = S(a["beard"]) * breg * bden
        ytop_lip = yc + oh + lt
        mreg = (xa < S(w.mouth_hw) + 0.035) & fr & ~is_nose & (yw >= ytop_lip - 0.005) & (yw < ytop_lip + 0.075)
        mreg = mreg & (yw < S(w.y_n) - 0.05)
        alpha = torch.maximum(beard, 0.95 * S(a["moustache"]) * mreg * bden)
        cw = col[idx][:, :, sv, su]
        col[idx, :, sv, su] = _lerp(cw, _c4(hair[idx] * 0.75), alpha.unsqueeze(1))
        spec[idx, sv, su] = spec[idx][:, sv, su] * (1 - alpha)

    # ---- surgical mask (on when mask >= 0.5), only on images that wear one
    mk_on = a["mask"] >= 0.5
    win = cam.window(*_box((-p["head_w"] - 0.1, w.y_m - 0.45, zero - 0.35), (p["head_w"] + 0.1, w.y_n + 0.15,
                                                                               zero + 1.4)), mk_on)
    if win is not None:
        idx = torch.nonzero(mk_on).flatten()
        sv, su = win
        xw, yw, zw, iw = (t[idx][:, sv, su] for t in (x, y, z, I))
        yn, ym = w.y_n[idx].view(-1, 1, 1), w.y_m[idx].view(-1, 1, 1)
        reg = (yw < yn + 0.14) & (yw > ym - 0.42) & (zw > 0.0)
        reg = reg | ((zw > -0.3) & ((yw - yn).abs() < 0.012) & (xw.abs() > 0.3))
        reg = reg & (iw != k_el) & (iw != k_er) & (iw != k_neck) & (iw >= 0)
        pleat = 1 - 0.08 * (torch.sin((yw - ym) * 45) > 0.6)
        cw = col[idx][:, :, sv, su]
        col[idx, :, sv, su] = torch.where(reg.unsqueeze(1), _c4(cols["mask"][idx]) * pleat.unsqueeze(1), cw)
        sw = spec[idx][:, sv, su]
        spec[idx, sv, su] = torch.where(reg, torch.full_like(sw, 0.05), sw)
    return col * mul.unsqueeze(1), spec


def hair_rgb(own: torch.Tensor, override: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
    """(N,3) hair colour: the override where >= 0 else the identity's own, greyed with age (chapter 00a)."""
    h = torch.where(override >= 0, override, own)
    c = _palette(HAIR_STOPS, h)
    g = (age.clamp(0, 1) ** 1.4 * 0.85).unsqueeze(-1)
    return _lerp(c, torch.tensor([0.70, 0.70, 0.70]), g)


def _shade(w: _World, R_head, D, I, Nn, xs, ys, cols, cam: _Cam) -> torch.Tensor:
    n, H, W = D.shape
    P = _head_point(R_head, xs, ys, torch.where(I >= 0, D, torch.zeros_like(D)))
    cls_of = torch.tensor([pr.cls for pr in w.prims] + [-1], dtype=torch.int64)
    cls = cls_of[I]  # I == -1 -> last entry (-1)
    col, spec = _skin_albedo(w, P, I, cols, cam)
    x, y, z = P
    a, p = w.a, w.p
    # flat-coloured classes through one gather; hair gets a cheap strand pattern
    hair = hair_rgb(p["hair_col"], a["hair_color"], a["age"])
    sun = (a["sunglasses"] >= 0.5).view(-1, 1)
    lens = torch.where(sun, torch.full_like(cols["frame"], 0.04), cols["frame"])
    table = torch.stack([torch.zeros_like(hair), torch.zeros_like(hair), hair, cols["cloth"], cols["frame"], lens,
                         cols["hat"]], 1)  # index cls + 1: background, SKIN, HAIR, CLOTH, FRAME, LENS, HAT
    flat = torch.gather(table, 1, (cls + 1).view(n, -1, 1).expand(n, H * W, 3))
    flat = flat.view(n, H, W, 3).permute(0, 3, 1, 2)
    is_skin = cls == SKIN
    col = torch.where(is_skin.unsqueeze(1), col, flat)
    spec_tab = torch.tensor([0.0, 0.0, 0.12, 0.03, 0.7, 0.7, 0.03])
    spec = torch.where(is_skin, spec, spec_tab[cls + 1])
    is_hair = cls == HAIR
    strand = torch.sin((x + 0.6 * z) * 45 + 2.5 * torch.sin(y * 7))
    hmul = torch.where(is_hair, 0.86 + 0.1 * strand, 1.0)

    # lighting (camera frame): Lambert + ambient + Blinn-Phong
    nx, ny, nz = Nn
    az, el = torch.deg2rad(a["light_azimuth"]), torch.deg2rad(a["light_elevation"])
    lx, ly, lz = torch.sin(az) * torch.cos(el), torch.sin(el), torch.cos(az) * torch.cos(el)
    ndl = (nx * _v(lx) + ny * _v(ly) + nz * _v(lz)).clamp_min(0)
    hx, hy, hz = lx, ly, lz + 1
    hn = torch.rsqrt(hx * hx + hy * hy + hz * hz + 1e-12)
    ndh = (nx * _v(hx * hn) + ny * _v(hy * hn) + nz * _v(hz * hn)).clamp_min(0)
    ndh = ndh * ndh
    ndh = ndh * ndh
    ndh = ndh * ndh * ndh  # ^24
    amb = _v(a["ambient"]) * (0.72 + 0.28 * nz.clamp_min(0))
    inten = _v(a["light_intensity"])
    img = col * ((amb + inten * ndl) * hmul).unsqueeze(1) + (spec * inten * ndh).unsqueeze(1)

    # background
    bgx = cols["bg_extra"]
    uu = torch.linspace(-1, 1, W, dtype=_DT).view(1, 1, W)
    vv = torch.linspace(-1, 1, H, dtype=_DT).view(1, H, 1)
    ang = _v(bgx[:, 0])
    grad = (0.5 + 0.5 * (uu * torch.cos(ang) + vv * torch.sin(ang))).clamp(0, 1)
    grad = torch.where(_v(bgx[:, 2]) > 0, grad, (vv + 1) / 2)
    bg = _c4(cols["bg1"]) + (_c4(cols["bg2"]) - _c4(cols["bg1"])) * grad.unsqueeze(1)
    if bool((bgx[:, 1] > 0).any()):  # low-frequency blobs, computed at 1/4 resolution
        h4, w4 = max(4, H // 4), max(4, W // 4)
        u4 = torch.linspace(-1, 1, w4, dtype=_DT).view(1, 1, w4)
        v4 = torch.linspace(-1, 1, h4, dtype=_DT).view(1, h4, 1)
        blob = _noise((u4 * _v(bgx[:, 2]) * 0.3 + _v(bgx[:, 3])).expand(n, h4, w4),
                      (v4 * _v(bgx[:, 2]) * 0.3 + _v(bgx[:, 3])).expand(n, h4, w4))
        blob = F.interpolate(blob.unsqueeze(1), size=(H, W), mode="bilinear", align_corners=False)
        bg = bg * (1 + _v(bgx[:, 1]).unsqueeze(1) * blob)
    img = torch.where((I < 0).unsqueeze(1), bg, img)
    return img


def _image_ops(img: torch.Tensor, a: dict, size: int) -> torch.Tensor:
    """resolution -> blur -> hue -> contrast -> brightness, all per image; (N,3,H,W) float in ~[0,1]."""
    n, _, H, W = img.shape
    res = a["resolution"].numpy()
    if (res < 1).any():
        img = img.clone()
        for r in np.unique(res[res < 1]):
            idx = torch.from_numpy(np.flatnonzero(res == r))
            lo = max(4, int(round(size * float(r))))
            small = F.interpolate(img[idx], size=(lo, lo), mode="area")
            img[idx] = F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
    sig = a["blur"] * (size / 112.0)
    on = torch.nonzero(sig > 0.05).flatten()
    if len(on):
        s = sig[on]
        R = int(math.ceil(3 * float(s.max())))
        k = torch.arange(-R, R + 1, dtype=_DT)
        ker = torch.exp(-0.5 * (k.view(1, -1) / s.view(-1, 1)) ** 2)
        ker = ker / ker.sum(-1, keepdim=True)
        ker3 = ker.repeat_interleave(3, 0)  # (m*3, K)
        x = img[on].reshape(1, -1, H, W)
        x = F.pad(x, (R, R, R, R), mode="replicate")
        x = F.conv2d(x, ker3.view(-1, 1, 1, 2 * R + 1), groups=x.shape[1])
        x = F.conv2d(x, ker3.view(-1, 1, 2 * R + 1, 1), groups=x.shape[1])
        img = img.clone()
        img[on] = x.view(-1, 3, H, W)
    hue = torch.deg2rad(a["hue"])
    if bool((hue != 0).any()):
        # rotation about the grey axis (YIQ)
        to = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        back = torch.linalg.inv(to)
        c, s = torch.cos(hue), torch.sin(hue)
        o, z = torch.ones_like(c), torch.zeros_like(c)
        rot = torch.stack([torch.stack([o, z, z], -1), torch.stack([z, c, -s], -1), torch.stack([z, s, c], -1)], -2)
        M = back @ rot @ to
        img = torch.einsum("nij,njhw->nihw", M, img)
    con = a["contrast"]
    if bool((con != 1).any()):
        mean = img.mean(dim=(1, 2, 3), keepdim=True)
        img = (img - mean) * con.view(-1, 1, 1, 1) + mean
    img = img + a["brightness"].view(-1, 1, 1, 1)
    return img


# ------------------------------------------------------------------------------------------ public API
def _broadcast(identities: Identities, attributes) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    if not isinstance(identities, Identities):
        raise ParameterError(f"render: identities must be faceworld.Identities (from sample_identities), got "
                             f"{type(identities).__name__}")
    if attributes is None:
        attributes = Attributes()
    if isinstance(attributes, Attributes):
        cols = stack(attributes, len(identities))
    else:
        cols = stack(attributes)
    m = len(next(iter(cols.values())))
    n = len(identities)
    if n == m:
        return identities.params, cols, identities.names
    if n == 1:
        return np.repeat(identities.params, m, 0), cols, identities.names * m
    if m == 1:
        return identities.params, {k: np.repeat(v, n) for k, v in cols.items()}, identities.names
    raise ParameterError(f"render: {n} identities and {m} attribute sets; give one of each per image, or one "
                         f"identity / one Attributes to broadcast")


def _camera(ident: np.ndarray, size: int, aligned: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image pixels-per-unit ``s`` and the pixel (ox, oy) of the head origin."""
    n = ident.shape[0]
    if not aligned:
        s = torch.full((n,), size / 2.9, dtype=_DT)
        c = (size - 1) / 2
        return s, torch.full((n,), c, dtype=_DT), c - s * 0.15
    neutral = stack(Attributes(), n)
    L = _World(ident, neutral).landmarks3d[:, :, :2]  # frontal: camera = head frame
    X = torch.stack([L[..., 0], -L[..., 1]], -1)  # (N,5,2) in a y-down frame
    T = _t(ARCFACE_TEMPLATE_112 * (size / 112.0)).unsqueeze(0)
    Xm, Tm = X.mean(1, keepdim=True), T.mean(1, keepdim=True)
    s = ((X - Xm) * (T - Tm)).sum((1, 2)) / ((X - Xm) ** 2).sum((1, 2))
    o = Tm[:, 0] - s.unsqueeze(-1) * Xm[:, 0]
    return s, o[:, 0], o[:, 1]


def render(identities: Identities, attributes: Attributes | Sequence[Attributes] | None = None, size: int = 112,
           aligned: bool = True, *, supersample: int = 1, batch_size: int = 64
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render images of (identity, attributes) pairs (chapter 00a).

    ``identities``: n identities (or 1, broadcast); ``attributes``: one :class:`Attributes` (broadcast),
    a list of n, or None (neutral). Returns ``images`` uint8 (N, size, size, 3), ``landmarks`` float32
    (N, 5, 2) pixel (x, y) (left eye, right eye, nose, left / right mouth corner; left = image left) and
    ``visibility`` bool (N, 5). ``aligned=True``: the frontal neutral landmarks of every identity land on
    the ArcFace template scaled to ``size``. ``supersample`` > 1 anti-aliases (cost ~ supersample^2).
    Deterministic on CPU: the same inputs give bit-identical images.
    """
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 16 <= size <= 1024:
        raise ParameterError(f"render: size must be an int in [16, 1024], got {size!r}")
    if not isinstance(supersample, (int, np.integer)) or not 1 <= supersample <= 4:
        raise ParameterError(f"render: supersample must be 1..4, got {supersample!r}")
    ident, cols, _ = _broadcast(identities, attributes)
    n = ident.shape[0]
    images = np.zeros((n, size, size, 3), np.uint8)
    lmk = np.zeros((n, 5, 2), np.float32)
    vis = np.zeros((n, 5), bool)
    # chunks of similar pose: features are evaluated in screen windows that are unions over a chunk, so
    # grouping by pose keeps them tight. Each image's pixels do not depend on its chunk.
    order = np.lexsort((cols["pitch"], np.round(cols["yaw"] / 10)))
    with torch.inference_mode():
        for b0 in range(0, n, batch_size):
            sl = order[b0:b0 + batch_size]
            im, lm, vi = _render_batch(ident[sl], {k: v[sl] for k, v in cols.items()}, int(size), aligned,
                                       int(supersample))
            images[sl], lmk[sl], vis[sl] = im, lm, vi
    return images, lmk, vis


def _render_batch(ident: np.ndarray, cols: dict[str, np.ndarray], size: int, aligned: bool, ss: int):
    w = _World(ident, cols)
    a = w.a
    R_head = _rot(torch.deg2rad(a["yaw"]), torch.deg2rad(a["pitch"]), torch.deg2rad(a["roll"]))
    s, ox, oy = _camera(ident, size, aligned)
    H = W = size * ss
    sh_, oxh, oyh = s * ss, (ox + 0.5) * ss - 0.5, (oy + 0.5) * ss - 0.5
    j = torch.arange(W, dtype=_DT)
    xs = (j.view(1, 1, W) - oxh.view(-1, 1, 1)) / sh_.view(-1, 1, 1)
    ys = (oyh.view(-1, 1, 1) - j.view(1, W, 1)) / sh_.view(-1, 1, 1)
    D, I = _raycast(w, R_head, xs, ys, H, W, sh_, oxh, oyh, True)
    Nn = _normals(w, R_head, D, I, xs, ys)
    pc = _per_image_colours(cols["background"])
    img = _shade(w, R_head, D, I, Nn, xs, ys, pc, _Cam(R_head, sh_, oxh, oyh, H, W))
    if ss > 1:
        img = F.avg_pool2d(img, ss)
    img = _image_ops(img, a, size)
    img = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    # landmarks: rotate, project, and test visibility with a ray through each
    L = torch.einsum("nij,nkj->nki", R_head, w.landmarks3d)  # (N,5,3) camera frame
    px = ox.view(-1, 1) + s.view(-1, 1) * L[..., 0]
    py = oy.view(-1, 1) - s.view(-1, 1) * L[..., 1]
    Dl, _ = _raycast(w, R_head, L[..., 0].unsqueeze(1), L[..., 1].unsqueeze(1), 1, 5, s, ox, oy, False)
    vis = L[..., 2] >= Dl[:, 0] - 0.04  # tolerance for grazing rays at silhouettes
    masked = (a["mask"] >= 0.5).view(-1, 1) & torch.tensor([False, False, True, True, True]).view(1, 5)
    vis = vis & ~masked
    return img, torch.stack([px, py], -1).numpy(), vis.numpy()
