/* A minimal TFLite external delegate for the tests (tests/inference/test_delegates.py).
 *
 * It implements the external delegate plugin entry points that LiteRT's load_delegate()
 * looks up (tensorflow/lite/delegates/external/external_delegate_interface.h) and claims no
 * nodes: Prepare returns kTfLiteOk without replacing any, so the CPU kernels still compute
 * everything. Options (key=value, as the runtime passes them):
 *   record=PATH        append every option it received, one "key=value" line each, to PATH
 *   refuse=1           tflite_plugin_create_delegate reports an error and returns NULL
 *   fail_prepare=1     Prepare returns kTfLiteError (the delegate refuses the graph)
 *   crash=1            tflite_plugin_create_delegate dies of SIGSEGV (a vendor library's bug)
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The TFLite C API ABI (tensorflow/lite/core/c/common.h), declared here so the test needs no
 * TensorFlow headers. Only pointers to the context and tensors are passed through. */
typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef int TfLiteBufferHandle;
typedef struct TfLiteContext TfLiteContext;
typedef struct TfLiteTensor TfLiteTensor;
typedef struct TfLiteOpaqueDelegateBuilder TfLiteOpaqueDelegateBuilder;

typedef struct TfLiteDelegate {
    void* data_;
    TfLiteStatus (*Prepare)(TfLiteContext* context, struct TfLiteDelegate* delegate);
    TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                                         TfLiteBufferHandle buffer_handle, TfLiteTensor* tensor);
    TfLiteStatus (*CopyToBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate,
                                       TfLiteBufferHandle buffer_handle, TfLiteTensor* tensor);
    void (*FreeBufferHandle)(TfLiteContext* context, struct TfLiteDelegate* delegate, TfLiteBufferHandle* handle);
    int64_t flags;
    TfLiteOpaqueDelegateBuilder* opaque_delegate_builder;
} TfLiteDelegate;

typedef struct {
    int fail_prepare;
} StubData;

static TfLiteStatus stub_prepare(TfLiteContext* context, TfLiteDelegate* delegate) {
    (void)context;
    StubData* data = (StubData*)delegate->data_;
    return data->fail_prepare ? kTfLiteError : kTfLiteOk;
}

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t num_options,
                                              void (*report_error)(const char*)) {
    StubData* data = calloc(1, sizeof(StubData));
    TfLiteDelegate* delegate = calloc(1, sizeof(TfLiteDelegate));
    if (data == NULL || delegate == NULL) {
        free(data);
        free(delegate);
        return NULL;
    }
    int refuse = 0;
    const char* record = NULL;
    for (size_t i = 0; i < num_options; i++) {
        if (strcmp(keys[i], "record") == 0) record = values[i];
        if (strcmp(keys[i], "refuse") == 0) refuse = strcmp(values[i], "1") == 0;
        if (strcmp(keys[i], "fail_prepare") == 0) data->fail_prepare = strcmp(values[i], "1") == 0;
        if (strcmp(keys[i], "crash") == 0 && strcmp(values[i], "1") == 0) raise(SIGSEGV);
    }
    if (record != NULL) {
        FILE* fh = fopen(record, "a");
        if (fh != NULL) {
            for (size_t i = 0; i < num_options; i++) fprintf(fh, "%s=%s\n", keys[i], values[i]);
            fclose(fh);
        }
    }
    if (refuse) {
        if (report_error != NULL) report_error("stub delegate: refused by its options (refuse=1)");
        free(data);
        free(delegate);
        return NULL;
    }
    delegate->data_ = data;
    delegate->Prepare = stub_prepare;
    delegate->flags = 0;
    delegate->opaque_delegate_builder = NULL;
    return delegate;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* delegate) {
    if (delegate != NULL) {
        free(delegate->data_);
        free(delegate);
    }
}
