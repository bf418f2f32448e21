"""tools/make_furniture_set.py: its catalogue reading, class choice, OBJ/MTL reading and point renderer."""

import importlib.util
import pathlib

import numpy as np
import pytest

TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "make_furniture_set.py"
_spec = importlib.util.spec_from_file_location("make_furniture_set", TOOL)
furniture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(furniture)


def test_read_properties_handles_comments_escapes_and_continued_lines():
    text = "# a comment\n! another\nname#1=Bill 10\\u20ac\nkey\\ with\\ spaces : value\nlong=first \\\n    second\n"
    assert furniture.read_properties(text) == {
        "name#1": "Bill 10\u20ac",
        "key with spaces": "value",
        "long": "first second",
    }


def test_catalogue_pieces_reads_numbered_entries_in_number_order_with_identity_rotation_by_default():
    properties = {
        "name#10": "Sofa",
        "model#10": "/c/sofa.obj",
        "icon#10": "/c/sofa.png",
        "name#2": "Lamp",
        "model#2": "/c/lamp.obj",
        "icon#2": "/c/lamp.png",
        "modelRotation#2": "0 0 1 0 1 0 -1 0 0",
        "category#2": "Lights",
    }
    lamp, sofa = furniture.catalogue_pieces(properties, "Cat")
    assert (lamp.name, lamp.model, lamp.icon, lamp.category, lamp.id) == (
        "Lamp",
        "c/lamp.obj",
        "c/lamp.png",
        "Lights",
        "Cat#2",
    )
    assert lamp.rotation == (0, 0, 1, 0, 1, 0, -1, 0, 0)
    assert sofa.rotation == (1, 0, 0, 0, 1, 0, 0, 0, 1)


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("Pool table", "pool_table"),
        ("Air conditioning - internal unit", "air_conditioning_internal_unit"),
        ("T-shirt", "t-shirt"),
        ("Captain's bed", "captains_bed"),
        ("Caf\u00e9 table", "cafe_table"),
        ("Bill 10\u20ac", "bill_10"),
        (" ?! ", ""),
    ],
)
def test_folder_name_gives_lower_case_ascii_words_joined_by_underscores(name, folder):
    assert furniture.folder_name(name) == folder


def _piece(name, number):
    return furniture.Piece(str(number), name, "", "", "cat", "i.png", "m.obj", (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_choose_pieces_drops_shared_names_and_spaces_the_rest_evenly():
    names = ["Chair", "chair", "Desk", "Lamp", "Oven", "Rug", "Sofa", "Table", "Vase", "?"]
    pieces = [_piece(name, number) for number, name in enumerate(names)]
    every = furniture.choose_pieces(pieces, 100)
    # "Chair" and "chair" share the folder "chair"; "?" has no folder name.
    assert [folder for folder, _ in every] == ["desk", "lamp", "oven", "rug", "sofa", "table", "vase"]
    # 3 of 7: indices 0, 7 // 3 = 2 and 14 // 3 = 4.
    assert [folder for folder, _ in furniture.choose_pieces(pieces, 3)] == ["desk", "oven", "sofa"]


def test_parse_obj_splits_polygons_into_fans_and_resolves_negative_indices():
    text = (
        "mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\n"
        "usemtl red\nf 1/1 2/2 3/3 4\nusemtl blue\nf -4 -3 -1\n"
    )
    mesh = furniture.parse_obj(text)
    square = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
    expected = [[square[0], square[1], square[2]], [square[0], square[2], square[3]], [square[0], square[1], square[3]]]
    np.testing.assert_array_equal(mesh.corners, expected)
    assert mesh.materials == ["", "red", "blue"] and mesh.material_of.tolist() == [1, 1, 2]
    np.testing.assert_array_equal(mesh.uvs[0], [[0, 0], [1, 0], [1, 1]])
    np.testing.assert_array_equal(mesh.uvs[1, :2], [[0, 0], [1, 1]])
    assert np.isnan(mesh.uvs[1, 2]).all() and np.isnan(mesh.uvs[2]).all()
    assert mesh.mtllibs == ["m.mtl"]


def test_parse_mtl_reads_colour_texture_and_opacity():
    text = "newmtl wood\nKd 0.5 0.25 2\nmap_Kd tex\\wood.jpg\nnewmtl glass\nKd 0 0 1\nd 0.2\nnewmtl film\nTr 0.25\n"
    materials = furniture.parse_mtl(text, "models/table")
    assert materials["wood"] == furniture.Material((0.5, 0.25, 1.0), "models/table/tex/wood.jpg", 1.0)
    assert materials["glass"].opacity == 0.2 and materials["film"].opacity == 0.75


def test_nearest_per_pixel_keeps_the_largest_depth_and_the_first_point_on_ties():
    # Point 0 (depth 1) and point 1 (depth 2) on pixel 0; points 2 and 3 tie on pixel 2; pixel 1 is empty.
    pixels = np.array([0, 0, 2, 2, 3])
    point_of = np.array([0, 1, 2, 3, 1])
    depths = np.array([1.0, 2.0, 5.0, 5.0])
    assert furniture.nearest_per_pixel(pixels, point_of, depths, 4).tolist() == [1, -1, 2, 1]


def test_sample_surface_leaves_out_glass_and_colours_points_from_their_texture():
    mesh = furniture.parse_obj(
        "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nv 1 0 1\nv 0 1 1\nvt 0 0\nvt 1 0\nvt 0 1\n"
        "usemtl painted\nf 1/1 2/2 3/3\nusemtl glass\nf 4 5 6\n"
    )
    materials = {
        "painted": furniture.Material((1.0, 0.0, 0.0), "t.png", 1.0),
        "glass": furniture.Material((0.0, 0.0, 1.0), "", furniture.MIN_OPACITY / 2),
    }
    texture = np.zeros((2, 2, 3))
    texture[1, 0] = (0.0, 1.0, 0.0)  # the bottom-left texel (v < 0.5, u < 0.5) is green, the rest black
    positions, colours, normals = furniture.sample_surface(
        mesh, materials, {"t.png": texture}, 2000, np.random.default_rng(0)
    )
    assert (positions[:, 2] == 0).all()  # all on the painted triangle z = 0, none on the glass one
    assert (positions[:, :2] >= 0).all() and (positions[:, :2].sum(axis=1) <= 1 + 1e-12).all()
    np.testing.assert_array_equal(np.abs(normals), np.tile([0.0, 0.0, 1.0], (2000, 1)))
    # uv = xy here, so the texel is the one under the point.
    green = (positions[:, 0] < 0.5) & (positions[:, 1] < 0.5)
    np.testing.assert_array_equal(colours[green], np.tile([0.0, 1.0, 0.0], (green.sum(), 1)))
    np.testing.assert_array_equal(colours[~green], np.zeros((int((~green).sum()), 3)))


def red_square():
    """A dense grid of red points on the square [0, 1]^2, z = 0, normal +z: (positions, colours, normals)."""
    grid = (np.arange(200) + 0.5) / 200
    x, y = np.meshgrid(grid, grid)
    positions = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)
    return positions, np.tile([1.0, 0.0, 0.0], (len(positions), 1)), np.tile([0.0, 0.0, 1.0], (len(positions), 1))


def test_render_draws_a_square_facing_the_viewer_lit_by_the_documented_shade_on_white():
    # A dense grid of red points on the square [0, 1]^2, z = 0, normal +z, seen from the front.
    positions, colours, normals = red_square()
    picture = furniture.render(positions, colours, normals, yaw=0, elevation=0, size=32, supersample=2)
    light = np.asarray(furniture.LIGHT) / np.linalg.norm(furniture.LIGHT)
    shade = furniture.AMBIENT + (1 - furniture.AMBIENT) * abs(light[2])
    assert picture.shape == (32, 32, 3) and picture.dtype == np.uint8
    assert picture[16, 16].tolist() == [round(255 * shade), 0, 0]
    assert picture[0, 0].tolist() == [255, 255, 255]
    # At 64 supersampled pixels, the points' extent maps to FILL * 64 = 57.6 pixels around the centre 32:
    # columns floor(32 - 28.8) = 3 to floor(32 + 28.8) = 60, plus the splat's second column, 61. Final
    # column j averages supersampled columns 2j and 2j + 1, so columns 2..30 are wholly red: 29.
    assert furniture.FILL == 0.9
    assert np.flatnonzero(picture[16, :, 1] == 0).tolist() == list(range(2, 31))
    assert np.flatnonzero(picture[:, 16, 1] == 0).tolist() == list(range(2, 31))


def _in(value, bounds):
    return bounds[0] <= value <= bounds[1]


@pytest.mark.parametrize("count", [4, 12])
def test_varied_views_are_seeded_by_the_class_and_drawn_within_the_documented_ranges(count):
    ranges = furniture.VARIED
    folders = [f"piece_{index}" for index in range(100)]
    views = {folder: furniture.varied_views(folder, count) for folder in folders}
    assert furniture.varied_views("piece_3", count) == views["piece_3"]  # same class, same views
    assert len({tuple(class_views) for class_views in views.values()}) == len(folders)  # other classes, other views
    gap = min(ranges["min_yaw_gap_degrees"], 360 // count)  # 40 for 4 views, 30 for 12
    for class_views in views.values():
        assert len(class_views) == count
        yaws = sorted(view.yaw for view in class_views)
        assert all(isinstance(yaw, int) and 0 <= yaw < 360 for yaw in yaws)
        gaps = np.diff(yaws + [yaws[0] + 360])  # around the circle
        assert gaps.min() >= gap and gaps.sum() == 360
        for view in class_views:
            assert _in(view.elevation, ranges["elevation_degrees"]) and _in(view.fill, ranges["fill"])
            assert all(_in(offset, ranges["offset"]) for offset in view.offset)
            assert all(_in(value, ranges["light_xy"]) for value in view.light[:2]) and view.light[2] == 0.7
            red, green, blue = view.gain  # brightness * (1 + warmth), brightness, brightness * (1 - warmth)
            assert _in(green, ranges["brightness"]) and _in(red / green - 1, ranges["warmth"])
            assert blue / green - 1 == pytest.approx(1 - red / green, abs=1e-12)
            assert view.background == (1.0, 1.0, 1.0) or all(
                _in(channel, ranges["background_channel"]) for channel in view.background
            )
    backgrounds = [view.background == (1.0, 1.0, 1.0) for class_views in views.values() for view in class_views]
    assert 0 < sum(backgrounds) < len(backgrounds)  # some white, some coloured


def test_render_with_a_view_fills_the_stated_fraction_off_centre_on_its_background():
    # The red square of the test above, drawn with fill 0.6, offset (0.1, -0.06), light along the view, gain 0.8.
    positions, colours, normals = red_square()
    view = furniture.View(
        yaw=0,
        elevation=0,
        fill=0.6,
        offset=(0.1, -0.06),
        light=(0, 0, 1),
        gain=(0.8, 1, 1),
        background=(0.9, 0.95, 0.92),
    )
    picture = furniture.render(positions, colours, normals, yaw=None, size=32, supersample=2, view=view)
    # 64 supersampled pixels: the extent maps to 0.6 * 64 = 38.4 pixels around 32 + 64 * offset. Columns
    # floor(32 - 19.2 + 6.4) = 19 to floor(32 + 19.2 + 6.4) = 57 plus the splat's 58; final column j averages
    # 2j and 2j + 1, so columns 10..28 are wholly red. Rows floor(32 - 19.2 - 3.84) = 8 to 47 + 1: rows 4..23.
    assert picture[14, 19].tolist() == [204, 0, 0]  # shade 1 (light along the normal) times gain 0.8
    assert np.flatnonzero(picture[14, :, 1] == 0).tolist() == list(range(10, 29))
    assert np.flatnonzero(picture[:, 19, 1] == 0).tolist() == list(range(4, 24))
    assert picture[0, 0].tolist() == [round(255 * 0.9), round(255 * 0.95), round(255 * 0.92)]
    assert furniture.coverage(picture, view.background) == pytest.approx(21 * 21 / 32**2)  # with partial edges


def test_coverage_counts_pixels_off_the_background():
    picture = np.full((4, 5, 3), 230, dtype=np.uint8)
    picture[0, 0, 2] = 224  # 6 levels off: drawn
    picture[1, 1, 0] = 235  # 5 levels off: background
    assert furniture.coverage(picture, (230 / 255,) * 3) == 1 / 20
    assert furniture.coverage(np.full((2, 2, 3), 250, dtype=np.uint8)) == 0.0  # white by default; 5 off is not drawn
