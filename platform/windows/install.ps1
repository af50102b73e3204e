<#
.SYNOPSIS
  Install WebSync on Windows: WinFsp, the package in a virtual environment, and a task
  that mounts the store as a drive letter at every logon.

.DESCRIPTION
  Run in a normal (not elevated) PowerShell from the source folder:

      powershell -ExecutionPolicy Bypass -File platform\windows\install.ps1 -Drive W: -Server https://box.example:8443 -User me

  Steps: WinFsp through winget (asks for elevation once), Python 3.11+ through winget if
  there is none, a venv in %LOCALAPPDATA%\WebSync\venv with `websync[windows]`, the login
  (asks for the password), and `websync service install --mount W:`, which registers the
  Task Scheduler task \WebSync\mount-W and starts it.

  Not yet run on a Windows machine: see docs\windows.md for the manual check list.
#>
param(
    [string]$Drive = "W:",
    [string]$Server,
    [string]$User,
    [string]$Source = (Resolve-Path "$PSScriptRoot\..\.."),
    [string]$Venv = "$env:LOCALAPPDATA\WebSync\venv"
)
$ErrorActionPreference = "Stop"

function Have($command) { return [bool](Get-Command $command -ErrorAction SilentlyContinue) }

if (-not (Have winget)) {
    throw "winget is missing: install 'App Installer' from the Microsoft Store, then run this again"
}

# WinFsp: the driver and DLL that winfspy binds.  winget exits non-zero when it is already there.
$winfsp = Get-ItemProperty "HKLM:\SOFTWARE\WOW6432Node\WinFsp" -ErrorAction SilentlyContinue
if (-not $winfsp) {
    Write-Host "installing WinFsp"
    winget install --id WinFsp.WinFsp --exact --accept-source-agreements --accept-package-agreements
    if ($LASTEXITCODE -ne 0) { throw "winget could not install WinFsp (exit $LASTEXITCODE)" }
}

# Python: the launcher 'py' picks the newest installed 3.x.
if (-not (Have py)) {
    Write-Host "installing Python 3.11"
    winget install --id Python.Python.3.11 --exact --accept-source-agreements --accept-package-agreements
    if ($LASTEXITCODE -ne 0) { throw "winget could not install Python (exit $LASTEXITCODE)" }
    $env:Path = [Environment]::GetEnvironmentVariable("Path", "User") + ";" + [Environment]::GetEnvironmentVariable("Path", "Machine")
}

if (-not (Test-Path "$Venv\Scripts\python.exe")) {
    Write-Host "creating $Venv"
    py -3 -m venv $Venv
    if ($LASTEXITCODE -ne 0) { throw "could not create the virtual environment" }
}
$python = "$Venv\Scripts\python.exe"
& $python -m pip install --upgrade pip
& $python -m pip install "$Source[windows]"
if ($LASTEXITCODE -ne 0) { throw "pip could not install WebSync" }
$websync = "$Venv\Scripts\websync.exe"

if ($Server -and $User) {
    & $websync login $Server --user $User
    if ($LASTEXITCODE -ne 0) { throw "login failed" }
}

# The task runs pythonw.exe (no console window) at logon, restarts a failed run every minute.
& $websync service install --mount $Drive
if ($LASTEXITCODE -ne 0) {
    throw "could not register the logon task; log in first: $websync login URL --user NAME"
}
Write-Host "done: the store is at $Drive now and at every logon"
