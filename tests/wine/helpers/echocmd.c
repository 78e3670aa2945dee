/* tests/wine/e2e helper: stands in for msiexec.exe to show the exact
 * command line a process received (GetCommandLineW), written as UTF-8 to
 * cmdline.txt in the current folder; exits 0. Used to check the msi kinds'
 * raw command line byte for byte (Wine's msiexec tokenizes quotes
 * differently from Windows', see docs/windows.md). */
#include <windows.h>

int wmain(void) {
    const wchar_t *line = GetCommandLineW();
    char buf[65536];
    int n = WideCharToMultiByte(CP_UTF8, 0, line, -1, buf, sizeof buf, NULL, NULL);
    if (n <= 0) return 1;
    HANDLE f = CreateFileW(L"cmdline.txt", GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, 0, NULL);
    if (f == INVALID_HANDLE_VALUE) return 1;
    DWORD w;
    WriteFile(f, buf, (DWORD)(n - 1), &w, NULL);
    CloseHandle(f);
    return 0;
}
