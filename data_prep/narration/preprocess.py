"""LLaVA-1.5's image preprocessing (`image_aspect_ratio: pad`): the frame is padded to a square with
the image processor's mean colour, centred, before the processor resizes and normalises it. The
Hugging Face llava-1.5 processor alone resizes the short side and crops the centre square instead,
which cuts away the sides of a 16:9 or 4:3 frame."""

from PIL import Image

from tea_jax.errors import InputError


def mean_colour(image_processor) -> tuple[int, ...]:
  """The processor's image mean as 8-bit values, truncated as LLaVA-1.5 computes its pad colour
  (OpenAI CLIP's mean gives (122, 116, 104))."""
  mean = getattr(image_processor, "image_mean", None)
  if mean is None:
    raise InputError(f"--preprocess pad needs the image processor's mean colour; "
                     f"{type(image_processor).__name__} has none (use --preprocess crop)")
  if isinstance(mean, (int, float)):
    mean = [mean] * 3
  return tuple(int(value * 255) for value in mean)


def pad_to_square(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
  """`image` centred on a square of `colour` whose side is its longer side (LLaVA-1.5's
  expand2square: the extra row or column of an odd difference goes after the image)."""
  image = image.convert("RGB") if image.mode != "RGB" else image  # the colour has 3 values
  width, height = image.size
  if width == height:
    return image
  side = max(width, height)
  square = Image.new(image.mode, (side, side), colour)
  square.paste(image, ((side - width) // 2, (side - height) // 2))
  return square
