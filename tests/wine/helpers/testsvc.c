/* A tiny Windows service for tests/wine/e2e: registered with Wine's service
 * control manager as UpshiftTestSvc; reports START_PENDING for 300 ms, then
 * RUNNING until it is told to stop. Built with mingw by tests/wine/e2e. */
#include <windows.h>

static SERVICE_STATUS_HANDLE handle;
static SERVICE_STATUS status;
static HANDLE stop_event;

static void report(DWORD state) {
    status.dwCurrentState = state;
    status.dwControlsAccepted = state == SERVICE_RUNNING ? SERVICE_ACCEPT_STOP : 0;
    SetServiceStatus(handle, &status);
}

static DWORD WINAPI control(DWORD code, DWORD type, LPVOID data, LPVOID ctx) {
    (void)type; (void)data; (void)ctx;
    switch (code) {
    case SERVICE_CONTROL_STOP:
    case SERVICE_CONTROL_SHUTDOWN:
        report(SERVICE_STOP_PENDING);
        SetEvent(stop_event);
        return NO_ERROR;
    case SERVICE_CONTROL_INTERROGATE:
        return NO_ERROR;
    default:
        return ERROR_CALL_NOT_IMPLEMENTED;
    }
}

static void WINAPI service_main(DWORD argc, LPWSTR *argv) {
    (void)argc; (void)argv;
    handle = RegisterServiceCtrlHandlerExW(L"UpshiftTestSvc", control, NULL);
    if (!handle) return;
    status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
    stop_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    report(SERVICE_START_PENDING);
    Sleep(300);
    report(SERVICE_RUNNING);
    WaitForSingleObject(stop_event, INFINITE);
    report(SERVICE_STOPPED);
}

int wmain(void) {
    SERVICE_TABLE_ENTRYW table[] = {{L"UpshiftTestSvc", service_main}, {NULL, NULL}};
    return StartServiceCtrlDispatcherW(table) ? 0 : 1;
}
