// Build the viewer for NGINX's /viewer/ location: hashed, immutable assets under dist/assets/, a no-cache
// index.html. Workers are ES modules so the DICOM image loader's decode worker loads under `worker-src 'self'`.
// Asset URLs are relative to the page: behind a proxy that publishes the gateway under a path
// (DICOMGW_PUBLIC_URL=https://portal.example/pacs) the page is /pacs/viewer/ and /viewer/assets/ is not ours.
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
    target: 'es2022',
    // Cornerstone's core is large; the warning is expected and the chunks are cached forever.
    chunkSizeWarningLimit: 3000,
    sourcemap: false,
    // Inline no wasm/font as data: URLs: CSP `connect-src 'self'` would block fetching them.
    assetsInlineLimit: 0,
  },
  worker: { format: 'es' },
  optimizeDeps: { exclude: ['@cornerstonejs/dicom-image-loader'], include: ['dicom-parser'] },
});
