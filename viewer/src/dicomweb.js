// The few DICOMweb calls the viewer makes itself (QIDO and series metadata), and the URLs it hands to the image
// loader. Every request is CORS-simple: GET, no Authorization header, no custom header, an Accept value without
// quotes; the credential is the token in the path (or the first-party cookie in the WebView flow).

/** A failed gateway call: HTTP status (0 when the network failed) and the gateway's machine-readable code. */
export class GatewayError extends Error {
  constructor(status, code, detail) {
    super(`gateway answered ${status} ${code}`);
    this.name = 'GatewayError';
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

// The gateway's lossless derivative (HTJ2K Lossless RPCL): asked for by name, with the stored frame as the fallback.
// The image loader's own Accept is fixed, so the request names them in PS3.18's `accept` query parameter.
export const DERIVATIVE_TS = '1.2.840.10008.1.2.4.202';
export const ACCEPT_EITHER = `accept=${encodeURIComponent(
  `image/jphc;transfer-syntax=${DERIVATIVE_TS},application/octet-stream;transfer-syntax=*`,
)}`;

// Series asked for per QIDO page (the gateway's default page; it answers up to 1000 when asked).
const SERIES_PAGE = 100;

// Red, green and blue palette colour LUT: (descriptor, data) tags.
const PALETTE_LUTS = [
  ['00281101', '00281201'],
  ['00281102', '00281202'],
  ['00281103', '00281203'],
];

/**
 * LUT data bytes as entries, read the way the image loader reads them from a Part 10 file (wadouri): one byte per
 * entry when the data holds exactly as many bytes as the descriptor's entries (0 meaning 65536), else 16-bit words,
 * little endian as the gateway serves them.
 */
function lutEntries(bytes, descriptorEntries) {
  const entries = Number(descriptorEntries) || 65536;
  if (bytes.length === entries) return Array.from(bytes);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: Math.floor(bytes.length / 2) }, (_, i) => view.getUint16(2 * i, true));
}

const tag = (obj, key) => obj?.[key]?.Value?.[0];
export const dicom = {
  string: (obj, key) => {
    const v = tag(obj, key);
    if (v && typeof v === 'object' && 'Alphabetic' in v) return v.Alphabetic;
    return v === undefined || v === null ? '' : String(v);
  },
  number: (obj, key) => {
    const v = Number(tag(obj, key));
    return Number.isFinite(v) ? v : null;
  },
};

export class DicomWebClient {
  /** @param {string} root e.g. `/t/{token}/dicomweb` (same origin) */
  constructor(root) {
    this.root = root;
  }

  /** A CORS-simple GET: the credential travels in the URL or the cookie, never in a header. */
  async get(url, accept) {
    try {
      return await fetch(url, {
        headers: { Accept: accept },
        credentials: 'same-origin',
        referrerPolicy: 'no-referrer',
        cache: 'no-store',
      });
    } catch {
      throw new GatewayError(0, 'network', 'the gateway could not be reached');
    }
  }

  async json(path) {
    const response = await this.get(this.root + path, 'application/dicom+json');
    if (!response.ok) {
      let body = {};
      try {
        body = await response.json();
      } catch {
        // NGINX's own 502/503 pages are HTML; the status says enough.
      }
      throw new GatewayError(response.status, String(body.error || ''), String(body.detail || ''));
    }
    if (response.status === 204) return [];
    return response.json();
  }

  /**
   * QIDO series of a study, every page of them, sorted by SeriesNumber; on a tie the larger series first (it opens
   * by default). A search answers a page at most (the gateway's 100 when none is asked, PS3.18 8.3.4.5): a study of
   * more series (a cardiac MR stores one per slice) lost the rest from its list.
   */
  async series(study) {
    const list = [];
    for (;;) {
      const page = await this.json(`/studies/${study}/series?limit=${SERIES_PAGE}&offset=${list.length}`);
      list.push(...page);
      if (page.length < SERIES_PAGE) break;
    }
    return list
      .map((s) => ({
        uid: dicom.string(s, '0020000E'),
        modality: dicom.string(s, '00080060'),
        description: dicom.string(s, '0008103E'),
        number: dicom.number(s, '00200011'),
        instances: dicom.number(s, '00201209'),
      }))
      .sort((a, b) => (a.number ?? 1e9) - (b.number ?? 1e9) || (b.instances ?? 0) - (a.instances ?? 0));
  }

  /** A series' instance metadata, with palette colour lookup tables as numbers (see `withPaletteValues`). */
  async metadata(study, series) {
    const metadata = await this.json(`/studies/${study}/series/${series}/metadata`);
    await Promise.all(metadata.map((instance) => this.withPaletteValues(instance)));
    return metadata;
  }

  /**
   * The image loader reads palette colour LUT data only from a DICOM JSON `Value` of numbers, while the gateway sends
   * binary values as base64 `InlineBinary` (up to DICOMGW_BULKDATA_THRESHOLD bytes) or a `BulkDataURI`: without this
   * a PALETTE COLOR image (ultrasound, secondary capture) fails to load.
   */
  async withPaletteValues(instance) {
    if (dicom.string(instance, '00280004') !== 'PALETTE COLOR') return;
    await Promise.all(
      PALETTE_LUTS.map(async ([descriptorTag, dataTag]) => {
        const element = instance[dataTag];
        if (!element || element.Value) return;
        let bytes = null;
        if (element.InlineBinary) bytes = Uint8Array.from(atob(element.InlineBinary), (c) => c.charCodeAt(0));
        else if (element.BulkDataURI) bytes = await this.bulkdata(element.BulkDataURI);
        if (bytes) element.Value = lutEntries(bytes, instance[descriptorTag]?.Value?.[0]);
      }),
    );
  }

  /** One bulk value's bytes (single part, CORS-simple); the URI carries the root the metadata was asked on. */
  async bulkdata(url) {
    const response = await this.get(url, 'application/octet-stream');
    if (!response.ok) throw new GatewayError(response.status, '', '');
    return new Uint8Array(await response.arrayBuffer());
  }

  thumbnailUrl(study, series) {
    return `${this.root}/studies/${study}/series/${series}/thumbnail`;
  }

  /**
   * Whether the gateway has made the derivative of this frame: a one-byte request whose Content-Type says which
   * representation answers. A derivative series loads progressively; a stored-only one as before (no Range on raw
   * pixels, which a progressive decoder cannot use).
   */
  async hasDerivative(frameUrl) {
    try {
      const response = await fetch(`${frameUrl}?${ACCEPT_EITHER}`, {
        headers: { Accept: 'multipart/related; type=application/octet-stream', Range: 'bytes=0-0' },
        credentials: 'same-origin',
        referrerPolicy: 'no-referrer',
        cache: 'no-store',
      });
      return (response.headers.get('Content-Type') || '').includes(DERIVATIVE_TS);
    } catch {
      return false;
    }
  }

  /** The absolute frame URL, which the image loader fetches with an unquoted multipart Accept. */
  frameUrl(study, series, instance, frame) {
    return `${location.origin}${this.root}/studies/${study}/series/${series}/instances/${instance}/frames/${frame}`;
  }
}

// Pixel Data, Float Pixel Data, Double Float Pixel Data: an instance without any (a structured report, an
// encapsulated PDF, a key object selection, a presentation state) has no frame to show.
const PIXEL_DATA = ['7FE00010', '7FE00008', '7FE00009'];

/** Whether an instance is an image: pixel data and a size. */
export function isImage(instance) {
  return PIXEL_DATA.some((key) => instance[key]) && Boolean(dicom.number(instance, '00280010'));
}

/**
 * The instances of a whole-slide image's largest level, the one browsed tile by tile: a slide's series holds its
 * pyramid (PS3.3 C.8.12.4: one instance, or a concatenation of several, per level) beside its label, overview and
 * thumbnail, whose tiles are of other grids. Every image of a series whose images have no Total Pixel Matrix.
 */
function baseLevel(images) {
  const area = (m) => (dicom.number(m, '00480006') ?? 0) * (dicom.number(m, '00480007') ?? 0);
  const largest = Math.max(0, ...images.map(area));
  return largest ? images.filter((m) => area(m) === largest) : images;
}

/**
 * Where each frame of a TILED_SPARSE slide lies on its grid of tiles ({column, row}, from 0): its Plane Position
 * (Slide) in the per-frame functional groups (PS3.3 C.8.12.6.1: a sparse slide's frames are any tiles, in any
 * order, often only those holding tissue). null when a frame has none, or the slide is TILED_FULL (its frames fill
 * the grid row by row).
 */
export function tilePositions(frames) {
  const at = [];
  for (const { instance, frame } of frames) {
    if (dicom.string(instance, '00209311') !== 'TILED_SPARSE') return null;
    const item = instance['52009230']?.Value?.[frame - 1]?.['0048021A']?.Value?.[0];
    const column = dicom.number(item || {}, '0048021E');
    const row = dicom.number(item || {}, '0048021F');
    const width = dicom.number(instance, '00280011');
    const height = dicom.number(instance, '00280010');
    if (column === null || row === null || !width || !height) return null;
    at.push({ column: Math.floor((column - 1) / width), row: Math.floor((row - 1) / height) });
  }
  return at;
}

/**
 * Order a series' instance metadata and expand it to one image per frame; instances that are not images are left out.
 * Single-frame instances sort by InstanceNumber, then by position along the slice normal; a multi-frame instance
 * (the whole-slide image) contributes frames 1..NumberOfFrames in order, a slide's largest level alone
 * (``baseLevel``), its concatenated parts by Concatenation Frame Offset Number.
 * @returns {{instance: object, sop: string, frame: number}[]}
 */
export function framesOf(metadata) {
  const position = (m) => {
    const ipp = m['00200032']?.Value;
    const iop = m['00200037']?.Value;
    if (!ipp || !iop || iop.length !== 6) return 0;
    const [a, b, c, d, e, f] = iop.map(Number);
    const n = [b * f - c * e, c * d - a * f, a * e - b * d];
    return n[0] * ipp[0] + n[1] * ipp[1] + n[2] * ipp[2];
  };
  const sorted = baseLevel(metadata.filter(isImage)).sort(
    (x, y) =>
      (dicom.number(x, '00209228') ?? 0) - (dicom.number(y, '00209228') ?? 0) ||
      (dicom.number(x, '00200013') ?? 0) - (dicom.number(y, '00200013') ?? 0) ||
      position(x) - position(y),
  );
  const frames = [];
  for (const instance of sorted) {
    const sop = dicom.string(instance, '00080018');
    const count = Math.max(1, dicom.number(instance, '00280008') ?? 1);
    for (let frame = 1; frame <= count; frame += 1) frames.push({ instance, sop, frame });
  }
  return frames;
}
