/* A TFLite external delegate whose create function crashes the process (issue 22, finding 6):
 * it dereferences a null pointer, so the process that loads it dies with SIGSEGV. Used by
 * tests/updates/integration/test_tentative_activation.py to show that the daemon, restarted,
 * serves the previous version and records the crashing one as failed. */
#include <stddef.h>

void* tflite_plugin_create_delegate(char** keys, char** values, size_t num_options,
                                    void (*report_error)(const char*)) {
    (void)keys;
    (void)values;
    (void)num_options;
    (void)report_error;
    volatile int* volatile nowhere = NULL;
    *nowhere = 1;
    return NULL;
}

void tflite_plugin_destroy_delegate(void* delegate) {
    (void)delegate;
}
