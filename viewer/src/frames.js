// Frame bytes checked (and where the fix is ours, fixed) before the image loader decodes them. Cornerstone 5.14
// draws some valid or damaged frames wrongly without reporting anything; a clinical viewer must not show a wrong
// picture as if it were right, so those are either made right here or refused (the load fails, and the viewer shows
// its "cannot be shown" screen).
import { convertColorSpace } from '@cornerstonejs/dicom-image-loader';
import extractMultipart from '@cornerstonejs/dicom-image-loader/wadors/extractMultipart';
import { getTransferSyntaxForContentType } from '@cornerstonejs/dicom-image-loader/wadors/loadImage';
import { dicom } from './dicomweb.js';

/** A frame the viewer refuses to draw; `reason` is a fixed phrase (never data from the image). */
export class UnshowableImage extends Error {
  constructor(reason) {
    super(reason);
    this.name = 'UnshowableImage';
    this.reason = reason;
  }
}

const NATIVE = new Set(['1.2.840.10008.1.2', '1.2.840.10008.1.2.1', '1.2.840.10008.1.2.1.99', '1.2.840.10008.1.2.2']);
const JPEG_8BIT = new Set(['1.2.840.10008.1.2.4.50', '1.2.840.10008.1.2.4.51']);
const JPEG_2000 = new Set([
  '1.2.840.10008.1.2.4.90',
  '1.2.840.10008.1.2.4.91',
  '1.2.840.10008.1.2.4.92',
  '1.2.840.10008.1.2.4.93',
  '1.2.840.10008.1.2.4.201',
  '1.2.840.10008.1.2.4.202',
  '1.2.840.10008.1.2.4.203',
  '3.2.840.10008.1.2.4.96',
]);

const RLE = '1.2.840.10008.1.2.5';

// Adobe APP14, version 100, no flags, transform 0: the three components are RGB, not YCbCr.
const ADOBE_RGB = Uint8Array.of(0xff, 0xee, 0x00, 0x0e, 0x41, 0x64, 0x6f, 0x62, 0x65, 0x00, 0x64, 0, 0, 0, 0, 0);

const ascii = (bytes, at, text) => [...text].every((c, i) => bytes[at + i] === c.charCodeAt(0));

/** Which colour markers a JPEG has before its first scan: JFIF (APP0) and Adobe (APP14). */
function jpegColourMarkers(bytes) {
  const found = { jfif: false, adobe: false };
  let i = 2; // after SOI
  while (i + 4 <= bytes.length && bytes[i] === 0xff) {
    const marker = bytes[i + 1];
    if (marker === 0xff) {
      i += 1; // fill byte
    } else if (marker === 0xda || marker === 0xd9) {
      break;
    } else if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      i += 2;
    } else {
      if (marker === 0xe0 && ascii(bytes, i + 4, 'JFIF\0')) found.jfif = true;
      if (marker === 0xee && ascii(bytes, i + 4, 'Adobe')) found.adobe = true;
      i += 2 + ((bytes[i + 2] << 8) | bytes[i + 3]);
    }
  }
  return found;
}

/** A JPEG 2000 codestream's image size and component count from its SIZ segment (null for anything else). */
function j2kSize(bytes) {
  if (bytes.length < 42 || bytes[0] !== 0xff || bytes[1] !== 0x4f || bytes[2] !== 0xff || bytes[3] !== 0x51) {
    return null; // a JP2 file or something else: not ours to judge
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    columns: view.getUint32(8) - view.getUint32(16),
    rows: view.getUint32(12) - view.getUint32(20),
    components: view.getUint16(40),
  };
}

/** The frame as Cornerstone can draw it right, or an UnshowableImage. */
function fixFrame(instance, transferSyntax, frame) {
  const pi = dicom.string(instance, '00280004');
  const samples = dicom.number(instance, '00280002') ?? 1;
  const rows = dicom.number(instance, '00280010');
  const columns = dicom.number(instance, '00280011');
  if (NATIVE.has(transferSyntax) && pi === 'YBR_FULL_422') {
    // The loader expects a 422 frame of 1.5 bytes per pixel, so native ones (2 bytes per pixel) reach vtk
    // unconverted and it throws. Converted here with the loader's own converter: RGB bytes, which it then takes as is.
    if (frame.length !== 2 * rows * columns) throw new UnshowableImage('YBR_FULL_422 frame of an unexpected size');
    const rgb = new Uint8ClampedArray(3 * rows * columns);
    convertColorSpace({ photometricInterpretation: pi, pixelData: frame }, rgb, false);
    return new Uint8Array(rgb.buffer);
  }
  if (JPEG_8BIT.has(transferSyntax) && pi === 'RGB' && samples === 3) {
    // Without JFIF or Adobe markers the JPEG decoder assumes YCbCr and converts RGB data as if it were (magenta);
    // an Adobe marker saying "RGB" makes it keep the components, as PhotometricInterpretation says they are.
    const markers = jpegColourMarkers(frame);
    if (markers.jfif || markers.adobe) return frame;
    const fixed = new Uint8Array(frame.length + ADOBE_RGB.length);
    fixed.set(frame.subarray(0, 2));
    fixed.set(ADOBE_RGB, 2);
    fixed.set(frame.subarray(2), 2 + ADOBE_RGB.length);
    return fixed;
  }
  if (transferSyntax === RLE) {
    // PS3.5 G.2: one segment per byte of each sample. The loader's decoder takes a header counting others as it
    // is and drew a posterized or shifted picture without an error; pydicom refuses such a frame.
    const bytesPerSample = Math.ceil((dicom.number(instance, '00280100') ?? 8) / 8);
    const segments = frame.length >= 64 ? new DataView(frame.buffer, frame.byteOffset, 4).getUint32(0, true) : 0;
    if (segments !== samples * bytesPerSample) throw new UnshowableImage('RLE frame of another number of segments');
  }
  if (JPEG_2000.has(transferSyntax)) {
    // OpenJPEG fails on such a codestream in the decode worker, yet the loader reports the image loaded (black).
    const size = j2kSize(frame);
    if (size && (size.columns !== columns || size.rows !== rows || size.components !== samples)) {
      throw new UnshowableImage('JPEG 2000 codestream not of the image’s size');
    }
  }
  return frame;
}

/**
 * A frame response body (the loader's XHR answer: multipart, or a single part) as the loader should decode it.
 * @param {object} instance the instance's DICOM JSON
 * @param {ArrayBuffer} body
 * @param {string} contentType the response's Content-Type
 * @returns {ArrayBuffer}
 */
export function prepareFrame(instance, body, contentType) {
  const samples = dicom.number(instance, '00280002') ?? 1;
  const bits = dicom.number(instance, '00280100') ?? 8;
  // The loader draws colour samples of more than 8 bits as if they were 8-bit (white bands): nothing to fix.
  if (samples > 1 && bits > 8) throw new UnshowableImage('colour of more than 8 bits per sample');
  // Bits Allocated 1 (a binary segmentation): Cornerstone 5.14 draws the frames the gateway sends black, no error.
  if (bits === 1) throw new UnshowableImage('1-bit pixels');
  const part = extractMultipart(contentType, body);
  const frame = new Uint8Array(part.pixelData);
  const fixed = fixFrame(instance, getTransferSyntaxForContentType(part.contentType), frame);
  if (fixed === frame) return body;
  if (!contentType.includes('multipart')) return fixed.buffer;
  // The same multipart answer with the part's bytes replaced: headers and closing boundary untouched.
  const whole = new Uint8Array(body);
  const start = part.tokenIndex + 4;
  const end = start + frame.length;
  const out = new Uint8Array(whole.length - frame.length + fixed.length);
  out.set(whole.subarray(0, start));
  out.set(fixed, start);
  out.set(whole.subarray(end), start + fixed.length);
  return out.buffer;
}
