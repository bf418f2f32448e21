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


def test_render_draws_a_square_facing_the_viewer_lit_by_the_documented_shade_on_white():
    # A dense grid of red points on the square [0, 1]^2, z = 0, normal +z, seen from the front.
    grid = (np.arange(200) + 0.5) / 200
    x, y = np.meshgrid(grid, grid)
    positions = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)
    colours = np.tile([1.0, 0.0, 0.0], (len(positions), 1))
    normals = np.tile([0.0, 0.0, 1.0], (len(positions), 1))
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
