"""clean_class_name on CUB, Cars196, SOP and image-folder style names."""

import pytest

from tf_langdml.data.class_names import clean_class_name


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("001.Black_footed_Albatross", "black footed albatross"),
        ("200.Common_Yellowthroat", "common yellowthroat"),
        ("062.Herring_Gull", "herring gull"),
        ("AM General Hummer SUV 2000", "am general hummer suv 2000"),
        ("Mercedes-Benz SL-Class Coupe 2009", "mercedes-benz sl-class coupe 2009"),
        ("BMW 1 Series Convertible 2012", "bmw 1 series convertible 2012"),
        ("bicycle_final", "bicycle final"),
        ("12_Golden  Retriever ", "golden retriever"),
        ("3) Red_Fox", "red fox"),
        ("Chelsea", "chelsea"),
    ],
)
def test_clean_class_name(raw, clean):
    assert clean_class_name(raw) == clean


def test_name_that_is_only_a_number_is_an_error():
    with pytest.raises(ValueError, match="'007.' is empty once its numbering is removed"):
        clean_class_name("007.")
