// Launch floor of a decode step on this GPU: per-layer time of 1 or 3 dependent kernels
// (the decode's score -> select -> attention chain) that do no work, in one CUDA graph of L
// layers (as the bench's per-layer number: launch latency shared over the layers), with
// and without programmatic dependent launch. Optionally each kernel does one dependent
// global round trip (thread 0 of every CTA reads what the previous kernel wrote).
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a scripts/microbench/launch_floor.cu -o floor && ./floor
#include <cstdio>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

__global__ void k_empty(int *buf, int rt) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (rt && threadIdx.x == 0) {  // one dependent round trip: read the previous kernel's value, write ours
        volatile int *v = buf + blockIdx.x * 32;
        v[0] = v[0] + 1;
    }
}

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int sms = prop.multiProcessorCount, L = 16;
    int *buf;
    CK(cudaMalloc(&buf, 3 * sms * 32 * 4));
    CK(cudaMemset(buf, 0, 3 * sms * 32 * 4));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("# %s, %d SMs: per-layer us of a graph of %d layers (median of 50 replays)\n", prop.name, sms, L);
    for (int nk : {1, 3})
        for (int pdl : {0, 1})
            for (int rt : {0, 1}) {
                cudaGraph_t g;
                CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
                for (int l = 0; l < L; ++l)
                    for (int k = 0; k < nk; ++k) {
                        cudaLaunchConfig_t cfg = {};
                        cfg.gridDim = dim3(3 * sms);
                        cfg.blockDim = dim3(128);
                        cfg.stream = st;
                        cudaLaunchAttribute at[1];
                        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
                        at[0].val.programmaticStreamSerializationAllowed = 1;
                        cfg.attrs = at;
                        cfg.numAttrs = (pdl && k > 0) ? 1 : 0;  // (the first kernel of a layer: a plain launch, as the score)
                        CK(cudaLaunchKernelEx(&cfg, k_empty, buf, rt));
                    }
                CK(cudaStreamEndCapture(st, &g));
                cudaGraphExec_t ge;
                CK(cudaGraphInstantiate(&ge, g, 0));
                for (int i = 0; i < 5; ++i) CK(cudaGraphLaunch(ge, st));
                std::vector<float> ts;
                for (int i = 0; i < 50; ++i) {
                    CK(cudaEventRecord(e0, st));
                    CK(cudaGraphLaunch(ge, st));
                    CK(cudaEventRecord(e1, st));
                    CK(cudaEventSynchronize(e1));
                    float ms;
                    CK(cudaEventElapsedTime(&ms, e0, e1));
                    ts.push_back(ms * 1e3f / L);
                }
                std::sort(ts.begin(), ts.end());
                printf("kernels a layer %d, PDL %d, round trip a kernel %d: %.2f us a layer (min %.2f)\n", nk, pdl, rt, ts[ts.size() / 2], ts[0]);
                CK(cudaGraphExecDestroy(ge));
                CK(cudaGraphDestroy(g));
            }
    return 0;
}
