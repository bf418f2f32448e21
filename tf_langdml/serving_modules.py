"""The tf.Modules an export serves: request checks, the embedding signatures and the gallery search.

:class:`EmbedderModule` decodes a batch of encoded images with the eval preprocessing in the
graph and answers L2-normalised float32 embeddings (``serving_default``, ``embed_images``);
:class:`GalleryModule` adds a gallery held as variables and the exact chunked top-k
(``search``, ``search_embeddings``). A batch of zero images never reaches the network.
:func:`~tf_langdml.export.export_embedder` builds and saves them; nothing here writes files.
"""

from __future__ import annotations

import tensorflow as tf

from tf_langdml.data.preprocessing import (
    DEFAULT_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    UNKNOWN,
    decode_rgb,
    eval_preprocess,
    header_image_size,
    image_format,
    parse_background,
)
from tf_langdml.models.untracked import Untracked
from tf_langdml.top_k import DEFAULT_CHUNK_ELEMENTS, top_k_in_chunks


def _surviving(dataset, spec):
    """The one batch of a dataset of (value, row) pairs whose failing elements were dropped."""
    empty = tf.data.Dataset.from_tensors(tuple(tf.zeros([0, *shape], dtype) for shape, dtype in spec))
    return (dataset.batch(2**31 - 1).concatenate(empty).take(1)).get_single_element()


_ROW_PROBLEMS = (
    "",
    "empty string (0 bytes)",
    "not a JPEG, PNG, GIF or BMP image",
    "the image header is damaged",
    "the header declares more than max_pixels = {} pixels (not decoded)",
    "corrupt or truncated image data",
)


def bad_image_rows_message(
    images: tf.Tensor, decodable: tf.Tensor, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tf.Tensor:
    """'row 1: <why>; row 4: <why>' for each row of ``images`` (encoded, (B,)) that is not ``decodable`` (B,).

    Reasons, read from the bytes alone without decoding: an empty string, data that
    is not JPEG / PNG / GIF / BMP, a damaged header, a header that declares more than
    ``max_pixels`` pixels; any other failing row holds corrupt or truncated image data.
    """
    rows = tf.range(tf.size(images, out_type=tf.int32))
    empty = tf.equal(tf.strings.length(images), 0)
    unknown = tf.equal(image_format(images), UNKNOWN) & ~empty
    known = tf.boolean_mask(rows, ~(empty | unknown))
    sizes = tf.data.Dataset.from_tensor_slices((tf.gather(images, known), known))
    sizes, read_rows = _surviving(
        sizes.map(
            tf.autograph.experimental.do_not_convert(lambda image, row: (header_image_size(image), row))
        ).ignore_errors(),
        [([2], tf.int64), ([], tf.int32)],
    )
    header_read = tf.reduce_any(tf.equal(rows[:, None], read_rows[None, :]), axis=1)
    too_large_rows = (
        read_rows if max_pixels is None else tf.boolean_mask(read_rows, sizes[:, 0] * sizes[:, 1] > int(max_pixels))
    )
    too_large = tf.reduce_any(tf.equal(rows[:, None], too_large_rows[None, :]), axis=1) & (max_pixels is not None)
    problem = tf.where(empty, 1, tf.where(unknown, 2, tf.where(~header_read, 3, tf.where(too_large, 4, 5))))
    problem = tf.where(decodable, 0, problem)
    reasons = tf.constant([reason.format(max_pixels) for reason in _ROW_PROBLEMS])
    bad = tf.not_equal(problem, 0)
    lines = tf.strings.join(
        [
            "row ",
            tf.strings.as_string(tf.boolean_mask(rows, bad)),
            ": ",
            tf.gather(reasons, tf.boolean_mask(problem, bad)),
        ]
    )
    return tf.strings.reduce_join(lines, separator="; ")


class EmbedderModule(tf.Module):
    """The embedder plus its two serving functions (and the metadata asset)."""

    def __init__(
        self, embedder, image_size, metadata_path, background=DEFAULT_BACKGROUND, max_pixels=DEFAULT_MAX_PIXELS
    ):
        super().__init__()
        # The Keras model is held untracked and only its variables are saved: a tracked Keras model makes
        # tf.saved_model.save trace and write every layer's call functions too (about half of an export's
        # time and of a reload's), which serving never calls. The signatures are the export's interface.
        self._embedder = Untracked(embedder)
        self.embedder_variables = list(embedder.variables)
        self.embed_dim = int(embedder.output_shape[-1])
        self.image_size = image_size
        self.background = parse_background(background)
        self.max_pixels = max_pixels
        self.metadata = tf.saved_model.Asset(str(metadata_path))
        # Every function has its input signature, so tf.saved_model.save traces each once (in its save
        # context); traced beforehand, each would be traced again there. The embedder and the decoding are
        # functions of their own, traced once and called by every signature that needs them.
        pixels = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")
        encoded = tf.TensorSpec([None], tf.string, name="images")
        self._embed_unit = tf.function(self._embed, input_signature=[pixels])
        # Only the embedder's function is left to autograph (the embedder may be anyone's model); the rest is
        # written with explicit tf.cond and tf.while_loop, and its source needs no rewriting.
        self._decode = tf.function(self._decode_batch, input_signature=[encoded], autograph=False)
        self.serving_default = tf.function(self._serving_default, input_signature=[encoded], autograph=False)
        self.embed_images = tf.function(self._embed_images, input_signature=[pixels], autograph=False)

    def signatures(self) -> dict[str, tf.types.experimental.GenericFunction]:
        """The serving signatures by name, for ``tf.saved_model.save(module, path, signatures=...)``."""
        return {"serving_default": self.serving_default, "embed_images": self.embed_images}

    def _embed(self, images):
        """Unit embeddings (B, d); a batch of zero images answers (0, d) without running the embedder.

        The network never sees an empty batch (oneDNN's AVX-512 convolution rejects one):
        a ``tf.cond`` on the batch size runs only the branch that returns zeros.
        """

        def run():
            return tf.math.l2_normalize(tf.cast(self._embedder.value(images, training=False), tf.float32), axis=-1)

        return tf.cond(tf.shape(images)[0] > 0, run, lambda: tf.zeros([0, self.embed_dim], tf.float32))

    def _check_pixels(self, images):
        """``images`` once they are known to be (B, size, size, 3) with finite values; fails naming the problem.

        The signature declares that shape, but TF Serving (and any caller of the graph
        below the Python signature) feeds whatever arrives, and the embedder would embed
        a 17 x 17 image without a word. Stock ops only (``Assert``), and O(B x pixels).
        """
        size = self.image_size
        shape = tf.shape(images)
        padded = tf.concat([shape, tf.zeros([4], tf.int32)], axis=0)  # shape[1:4] exists at any rank
        right_size = tf.equal(tf.size(shape), 4) & tf.reduce_all(tf.equal(padded[1:4], [size, size, 3]))
        check_size = tf.debugging.Assert(
            right_size,
            [
                tf.strings.format(
                    "embed_images takes float32 RGB images of shape (batch, {}, {}, 3), values in [0, 255]; got shape {}. "
                    "Resize and centre-crop them to {} x {} first, or send the encoded images to serving_default.",
                    (size, size, shape, size, size),
                )
            ],
        )
        with tf.control_dependencies([check_size]):
            finite = tf.reduce_all(tf.math.is_finite(images), axis=[1, 2, 3])
        all_finite = tf.reduce_all(finite)
        rows = tf.range(tf.shape(finite)[0])
        problems = tf.cond(
            all_finite,
            lambda: tf.constant(""),
            lambda: tf.strings.reduce_join(
                tf.strings.join(
                    ["row ", tf.strings.as_string(tf.boolean_mask(rows, ~finite)), ": NaN or Inf pixel values"]
                ),
                separator="; ",
            ),
        )
        check_values = tf.debugging.Assert(all_finite, ["Bad image(s) in the request; nothing was embedded.", problems])
        with tf.control_dependencies([check_values]):
            return tf.identity(images)

    def _embed_images(self, images):
        return {"embeddings": self._embed_unit(self._check_pixels(images))}

    def _decode_batch(self, images):
        """(B, size, size, 3) float32 of a batch of encoded images; fails naming every bad row.

        A decoding error cannot be caught inside a graph, so the batch is decoded by a
        dataset that drops failing rows: the rows missing from its output are the bad
        ones, and only then are the reasons worked out from their bytes.
        """
        size, background, max_pixels = self.image_size, self.background, self.max_pixels
        rows = tf.range(tf.size(images, out_type=tf.int32))
        decoded = (
            tf.data.Dataset.from_tensor_slices((images, rows))
            .map(
                tf.autograph.experimental.do_not_convert(
                    lambda image, row: (eval_preprocess(decode_rgb(image, background, max_pixels), size=size), row)
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            .ignore_errors()
        )
        batch, decoded_rows = _surviving(decoded, [([size, size, 3], tf.float32), ([], tf.int32)])
        decodable = tf.reduce_any(tf.equal(rows[:, None], decoded_rows[None, :]), axis=1)
        all_decoded = tf.reduce_all(decodable)
        problems = tf.cond(
            all_decoded, lambda: tf.constant(""), lambda: bad_image_rows_message(images, decodable, max_pixels)
        )
        check = tf.debugging.Assert(all_decoded, ["Bad image(s) in the request; nothing was embedded.", problems])
        with tf.control_dependencies([check]):
            return tf.identity(batch)

    def _serving_default(self, images):
        return {"embeddings": self._embed_unit(self._decode(images))}


class GalleryModule(EmbedderModule):
    """The embedder's module plus a gallery (unit embeddings, item ids, class names) and the search signatures."""

    def __init__(
        self,
        embedder,
        image_size,
        metadata_path,
        gallery,
        background=DEFAULT_BACKGROUND,
        max_pixels=DEFAULT_MAX_PIXELS,
        chunk_elements=DEFAULT_CHUNK_ELEMENTS,
    ):
        super().__init__(embedder, image_size, metadata_path, background, max_pixels)
        self.gallery_embeddings = tf.Variable(gallery.embeddings, trainable=False, name="gallery_embeddings")
        self.gallery_item_ids = tf.Variable(gallery.item_ids, trainable=False, name="gallery_item_ids")
        self.gallery_class_names = tf.Variable(gallery.class_names, trainable=False, name="gallery_class_names")
        self.chunk_elements = int(chunk_elements)
        k = tf.TensorSpec([], tf.int32, name="k")
        self._nearest = tf.function(
            self._neighbours, input_signature=[tf.TensorSpec([None, self.embed_dim], tf.float32), k], autograph=False
        )
        self.search = tf.function(
            self._search, input_signature=[tf.TensorSpec([None], tf.string, name="images"), k], autograph=False
        )
        self.search_embeddings = tf.function(
            self._search_embeddings,
            input_signature=[tf.TensorSpec([None, self.embed_dim], tf.float32, name="embeddings"), k],
            autograph=False,
        )

    def signatures(self) -> dict[str, tf.types.experimental.GenericFunction]:
        return {**super().signatures(), "search": self.search, "search_embeddings": self.search_embeddings}

    def _neighbours(self, queries, k):
        scores, indices = top_k_in_chunks(queries, self.gallery_embeddings, k, self.chunk_elements)
        return {
            "item_ids": tf.gather(self.gallery_item_ids, indices),
            "class_names": tf.gather(self.gallery_class_names, indices),
            "scores": scores,
            "indices": indices,
        }

    def _search(self, images, k):
        return self._nearest(self._embed_unit(self._decode(images)), k)

    def _unit_queries(self, embeddings):
        """Each query row scaled to unit length; fails naming every row that has no direction.

        A row with NaN or Inf, or all zeros, would score 0 or NaN against every item and
        return the first gallery rows as if they were neighbours, so it is refused.
        Dividing by the row's largest magnitude first keeps finite rows of any scale
        (1e30 or 1e-30) from overflowing or underflowing the sum of squares. O(B x D).
        """
        shape = tf.shape(embeddings)
        padded = tf.concat([shape, tf.zeros([2], tf.int32)], axis=0)
        right_size = tf.equal(tf.size(shape), 2) & tf.equal(padded[1], self.embed_dim)
        check_size = tf.debugging.Assert(
            right_size,
            [
                tf.strings.format(
                    "search_embeddings takes float32 embeddings of shape (batch, {}); got shape {}. Embed the images with "
                    "this export's embed_images or serving_default.",
                    (self.embed_dim, shape),
                )
            ],
        )
        with tf.control_dependencies([check_size]):
            finite = tf.reduce_all(tf.math.is_finite(embeddings), axis=1)
        scale = tf.where(finite, tf.reduce_max(tf.abs(embeddings), axis=1), 0.0)
        good = finite & (scale > 0)
        all_good = tf.reduce_all(good)
        rows = tf.range(tf.shape(good)[0])

        def problems():
            reasons = tf.where(
                tf.boolean_mask(finite, ~good), "all zeros (a zero-length vector has no direction)", "NaN or Inf values"
            )
            return tf.strings.reduce_join(
                tf.strings.join(["row ", tf.strings.as_string(tf.boolean_mask(rows, ~good)), ": ", reasons]),
                separator="; ",
            )

        check_values = tf.debugging.Assert(
            all_good,
            [
                "Bad query embedding(s) in the request; nothing was searched.",
                tf.cond(all_good, lambda: tf.constant(""), problems),
            ],
        )
        with tf.control_dependencies([check_values]):
            return tf.math.l2_normalize(embeddings / tf.where(good, scale, 1.0)[:, None], axis=-1)

    def _search_embeddings(self, embeddings, k):
        return self._nearest(self._unit_queries(embeddings), k)
