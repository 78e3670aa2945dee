/* tests/wine/e2e helper: holds something the way another program would,
 * until it is killed (at most 300 s), so that `upshift preflight` finds it.
 *   hold.exe port N      listen on TCP 127.0.0.1:N (Winsock)
 *   hold.exe mutex NAME  own the named mutex NAME (Global\_MSIExecute is
 *                        what Windows Installer holds while it installs)
 * Writes "ready" to hold-ready.txt in the current folder once it holds. */
#include <winsock2.h>
#include <windows.h>
#include <stdlib.h>

static void ready(void) {
    HANDLE f = CreateFileW(L"hold-ready.txt", GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, 0, NULL);
    if (f != INVALID_HANDLE_VALUE) {
        DWORD w;
        WriteFile(f, "ready", 5, &w, NULL);
        CloseHandle(f);
    }
}

int wmain(int argc, wchar_t **argv) {
    if (argc != 3) return 2;
    if (lstrcmpW(argv[1], L"port") == 0) {
        WSADATA d;
        if (WSAStartup(MAKEWORD(2, 2), &d) != 0) return 1;
        SOCKET s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
        if (s == INVALID_SOCKET) return 1;
        struct sockaddr_in a = {0};
        a.sin_family = AF_INET;
        a.sin_port = htons((u_short)_wtoi(argv[2]));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) return 1;
        if (listen(s, 4) != 0) return 1;
    } else if (lstrcmpW(argv[1], L"mutex") == 0) {
        if (CreateMutexW(NULL, TRUE, argv[2]) == NULL) return 1;
    } else {
        return 2;
    }
    ready();
    Sleep(300 * 1000);
    return 0;
}
